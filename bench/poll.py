"""One controller poll cycle over many simulated agents: goal ≤ 5 s for 1,000.

The agents are one small HTTP/1.1 server in another process, answering `/v1/health`,
`/v1/host` and `/v1/devices` (ETag, 304 on a match) under `/a/<n>/`; hosts are written
straight into a fresh SQLite database (registration would call each agent once more).
Prints the first cycle (every host new: full fetch and write of its devices) and
steady-state cycles (every host unchanged: health + 304).

    .venv/bin/python bench/poll.py [--agents 1000] [--concurrency 32] [--database URL]
"""

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from controller.config import DEFAULTS  # noqa: E402
from controller.db import Database, Host, upgrade  # noqa: E402
from controller.poller import Poller  # noqa: E402


def inventory(index):
    """Two GPUs with audio functions and a NIC, like a small GPU host."""
    pci = []
    for bus in ("3b", "af"):
        for function, kind, device in ((0, "gpu", "1eb8"), (1, "gpu-audio", "10f8")):
            pci.append({"id": f"0000:{bus}:00.{function}", "vendor_id": "10de",
                        "device_id": device, "type": kind, "assignable": True,
                        "iommu_group": int(bus, 16), "attached_to": None,
                        "vendor_name": "NVIDIA", "device_name": kind})
    pci.append({"id": "0000:18:00.0", "vendor_id": "8086", "device_id": "1593", "type": "nic",
                "assignable": True, "iommu_group": 21, "attached_to": None})
    return json.dumps({"generation": 1, "pci": pci, "usb": []}).encode()


class SimulatedAgents(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    boot = os.urandom(8).hex()

    def do_GET(self):  # noqa: N802 - http.server's name
        _, _, index, rest = self.path.split("/", 3)
        if rest == "v1/health":
            body = json.dumps({"status": "ok", "host_id": f"sim-{index}",
                               "boot_id": self.boot}).encode()
        elif rest == "v1/host":
            body = json.dumps({"hostname": f"sim-{index}", "memory_mib": 524288,
                               "cpu": {"threads": 64},
                               "iommu": {"kernel_enabled": True, "ready": True}}).encode()
        elif rest == "v1/devices":
            if self.headers.get("If-None-Match") == '"g1"':
                self._answer(304, b"")
                return
            body = inventory(index)
        else:
            self._answer(404, b"{}")
            return
        self._answer(200, body)

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("ETag", '"g1"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(port):
    server = ThreadingHTTPServer(("127.0.0.1", port), SimulatedAgents)
    server.daemon_threads = True
    server.request_queue_size = 1024
    server.serve_forever()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--database", help="default: a fresh SQLite file")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = multiprocessing.Process(target=serve, args=(port,), daemon=True)
    server.start()
    workdir = tempfile.mkdtemp(prefix="hostplane-bench-poll-")
    url = args.database or f"sqlite:///{workdir}/controller.db"
    upgrade(url)
    db = Database(url)
    with db.write() as session:
        session.add_all(Host(id=f"sim-{i}", url=f"http://127.0.0.1:{port}/a/{i}", token="t",
                             cluster="bench") for i in range(args.agents))
    time.sleep(0.3)
    poller = Poller(db, {**DEFAULTS["poll"], "concurrency": args.concurrency, "jitter_s": 0})
    print(f"{args.agents} simulated agents, concurrency {args.concurrency}, {url.split(':')[0]}")
    started = time.perf_counter()
    outcomes = poller.poll_cycle(jitter=0)
    first = time.perf_counter() - started
    print(f"first cycle (all new, {len(outcomes)} hosts, "
          f"{sum(o == 'resynced' for o in outcomes.values())} synced): {first:.2f} s")
    steady = []
    for _ in range(args.cycles):
        started = time.perf_counter()
        outcomes = poller.poll_cycle(jitter=0)
        steady.append(time.perf_counter() - started)
        assert all(o == "unchanged" for o in outcomes.values()), set(outcomes.values())
    print(f"steady cycle (health + 304): median {statistics.median(steady):.2f} s, "
          f"max {max(steady):.2f} s  (goal <= 5 s)")
    poller.stop()
    server.terminate()


if __name__ == "__main__":
    main()
