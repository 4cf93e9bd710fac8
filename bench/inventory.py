"""Inventory speed on a generated ~1,000-device GPU server, against lspci on the same tree.

    .venv/bin/python bench/inventory.py [--runs 15] [--http]

Prints (all medians of repeated runs):
- full inventory, in-process: sysfs walk + udev-free USB read + models + JSON body;
- `lspci -Dmmnnv -A linux-sysfs -O sysfs.path=DIR/bus/pci` over the same tree, as a
  process (it is a C program; its run includes loading pci.ids, as ours does once);
- the ratio (goal: ≤ 1.0);
- `hostplane-agent inventory` as a whole process (interpreter start, imports, scan,
  JSON printed) against lspci, run alternately so both see the same load (goal ≤ 1.5);
- one hot-plug update (re-read of the changed function only) against a full scan;
- with --http: GET /v1/devices requests/s under gunicorn with 2 workers, via wrk
  (Debian package `wrk`), for the full body and for the 304 path.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.inventory.generation import SharedGeneration  # noqa: E402
from agent.inventory.pciids import PciIds  # noqa: E402
from agent.inventory.store import Inventory  # noqa: E402
from agent.inventory.sysfs import SysfsTree  # noqa: E402
from agent.inventory.udev import TreeUsbSource  # noqa: E402
from hostplane.core.pci import DEFAULT_CRITICAL_DRIVERS  # noqa: E402
from tests.hosts import gpu_server, small_gpu_host  # noqa: E402
from tests.synthetic import write_sysfs_tree  # noqa: E402


def median_ms(samples):
    return statistics.median(samples) * 1000


def full_scan(root, names):
    sysfs = SysfsTree(root)
    inventory = Inventory(sysfs, TreeUsbSource(sysfs), SharedGeneration(None),
                          DEFAULT_CRITICAL_DRIVERS, names=names)
    inventory.scan()
    body, _, _ = inventory.body()
    return inventory, body


def time_runs(function, runs):
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


def bench_scan(root, runs):
    cold_started = time.perf_counter()
    pciids = PciIds()
    inventory, body = full_scan(root, pciids.names)
    cold = time.perf_counter() - cold_started
    samples = time_runs(lambda: full_scan(root, pciids.names), runs)
    devices = len(inventory.pci_devices()) + len(inventory.usb_devices())
    print(f"host: {len(inventory.pci_devices())} PCI functions + {len(inventory.usb_devices())} "
          f"USB devices = {devices}; /v1/devices body {len(body) / 1024:.0f} KiB")
    print(f"full inventory, in-process: median {median_ms(samples):.1f} ms "
          f"(min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f}; first run incl. "
          f"pci.ids load {cold * 1000:.1f} ms; {runs} runs)")
    return inventory, statistics.median(samples)


def bench_lspci(root, runs):
    if shutil.which("lspci") is None:
        print("lspci: not installed (Debian package pciutils)")
        return None
    command = ["lspci", "-Dmmnnv", "-A", "linux-sysfs", "-O", f"sysfs.path={root}/bus/pci"]
    subprocess.run(command, capture_output=True, check=True)
    samples = time_runs(lambda: subprocess.run(command, capture_output=True, check=True), runs)
    print(f"lspci -Dmmnnv over the same tree: median {median_ms(samples):.1f} ms "
          f"(min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f})")
    return statistics.median(samples)


def bench_command(root, runs):
    """Whole processes, side by side: what an operator waits for at the prompt."""
    if shutil.which("lspci") is None:
        return
    script = os.path.join(os.path.dirname(sys.executable), "hostplane-agent")
    ours = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "agent.cli"]
    ours += ["inventory", "--compact", "--sysfs-root", root]
    theirs = ["lspci", "-Dmmnnv", "-A", "linux-sysfs", "-O", f"sysfs.path={root}/bus/pci"]
    env = dict(os.environ, HOSTPLANE_HOST_STATE_DIR=os.path.join(os.path.dirname(root), "state"),
               PYTHONPATH=os.pathsep.join(filter(None, [
                   os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   os.environ.get("PYTHONPATH")])))
    os.makedirs(env["HOSTPLANE_HOST_STATE_DIR"], exist_ok=True)
    wall, cpu = {"ours": [], "lspci": []}, {"ours": [], "lspci": []}
    for _ in range(runs + 1):   # the first round warms the page cache, not counted
        for name, command in (("ours", ours), ("lspci", theirs)):
            before = _children_cpu()
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True, env=env)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(_children_cpu() - before)
    for label, samples in (("wall", wall), ("CPU (user+sys, steadier on a busy machine)", cpu)):
        ours_ms, lspci_ms = (median_ms(samples[name][1:]) for name in ("ours", "lspci"))
        print(f"whole process, {label}: hostplane-agent inventory {ours_ms:.1f} ms, "
              f"lspci -Dmmnnv {lspci_ms:.1f} ms, ratio {ours_ms / lspci_ms:.2f} "
              f"(goal <= 1.5; medians of {runs} alternating runs)")


def _children_cpu():
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_hotplug(inventory, runs):
    address = next(d["id"] for d in inventory.pci_devices() if d["type"] == "gpu")
    reads = []
    original = inventory.sysfs.read_pci_function

    def counting(addr):
        reads.append(addr)
        return original(addr)

    inventory.sysfs.read_pci_function = counting

    def update():
        inventory.refresh_pci(address)
        inventory.body()

    samples = time_runs(update, runs)
    inventory.sysfs.read_pci_function = original
    print(f"hot-plug update of {address}: median {median_ms(samples):.1f} ms, "
          f"{len(reads) // runs} function(s) re-read from sysfs per event")


def bench_http(host_factory, label, duration=10):
    if shutil.which("wrk") is None:
        print("HTTP: wrk not installed (apt-get install wrk); skipped")
        return
    with tempfile.TemporaryDirectory() as scratch:
        root = write_sysfs_tree(host_factory(), os.path.join(scratch, "sys"))
        port = 17070 + (os.getpid() % 1000)
        env = dict(os.environ, HOSTPLANE_SERVER_TOKEN="bench", HOSTPLANE_HOST_ID="bench",
                   HOSTPLANE_HOST_SYSFS_ROOT=root, HOSTPLANE_HOST_STATE_DIR=scratch,
                   HOSTPLANE_LIBVIRT_URI="test:///default")
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "2",
                                   "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
                                   "agent.app:create_app()"], env=env)
        try:
            url = f"http://127.0.0.1:{port}/v1/devices"
            etag = _wait_and_etag(url)
            for name, headers in (("200 full body", []),
                                  ("304 If-None-Match", ["-H", f"If-None-Match: {etag}"])):
                result = subprocess.run(
                    ["wrk", "-t", "2", "-c", "16", "-d", f"{duration}s",
                     "-H", "Authorization: Bearer bench", *headers, url],
                    capture_output=True, text=True, check=True)
                rate = next(line.split()[1] for line in result.stdout.splitlines()
                            if line.startswith("Requests/sec"))
                print(f"GET /v1/devices ({label}, {name}), gunicorn 2 workers: {rate} req/s")
        finally:
            server.terminate()
            server.wait(timeout=20)


def _wait_and_etag(url):
    import requests
    for _ in range(100):
        try:
            answer = requests.get(url, headers={"Authorization": "Bearer bench"}, timeout=2)
            return answer.headers["ETag"]
        except requests.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("agent did not start")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--http", action="store_true", help="also measure requests/s with wrk")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = write_sysfs_tree(gpu_server(), os.path.join(scratch, "sys"))
        inventory, ours = bench_scan(root, args.runs)
        theirs = bench_lspci(root, args.runs)
        if theirs:
            print(f"ratio hostplane / lspci: {ours / theirs:.2f} (goal <= 1.0)")
        bench_command(root, args.runs)
        bench_hotplug(inventory, args.runs)
    if args.http:
        bench_http(small_gpu_host, "16-function host")
        bench_http(gpu_server, "944-device server")


if __name__ == "__main__":
    main()
