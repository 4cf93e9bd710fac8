"""Sustained placements per second end to end: clients → two controllers → agents (issue 17).

5,000 simulated agents (one asyncio process, one port per host, answering the calls the controller
makes: health, host facts, devices with ETag, VM create, list and lookup, networks), a
throw-away database on the running PostgreSQL, two controller processes (gunicorn, one
worker each) on that database, and concurrent clients creating 2,000 VMs that each ask
for one device of a device pool (`--ask pool`, the default; the pool matches the hosts'
GPU model and is made before the clock starts) or one GPU by model (`--ask gpu`). Prints
registration time, placements/s, p50/p99 latency and the
answers by status, then counts double claims two ways: devices the agents were asked to
give to two VMs, and VMs the database shows holding other than one GPU. Goal ≥ 200/s.

Each simulated host has two GPUs 10de:1eb8, each with its audio function in one IOMMU
group (the inventory made by the agent's own core from raw records), and a NIC. The
controllers' pollers are off: registration fetches each host once, and the measure is
placement, not polling.

    .venv/bin/python bench/placements.py [--agents 5000] [--vms 2000] [--clients 32]
                                         [--ask pool|gpu]
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TOKEN = "bench-agent-token"          # nosec B105 - a throw-away token on loopback
ADMIN_TOKEN = "bench-admin-token"    # nosec B105
GPU = {"vendor_id": "10de", "device_id": "1eb8"}
POOL = "bench-gpus"
ASKS = {"pool": {"devices": [{"pool": POOL, "count": 1}]}, "gpu": {"gpus": [GPU]}}
BOOT_ID = uuid.uuid4().hex


def inventory_body():
    """One host's `/v1/devices` answer, built by the agent's own inventory core."""
    from hostplane.core.pci import build_pci_inventory
    records = []
    for group, (root, gpu, node) in enumerate((("0000:3a:00.0", "0000:3b:00", 0),
                                               ("0000:ae:00.0", "0000:af:00", 1))):
        records.append({"address": root, "vendor_id": "8086", "device_id": "2030",
                        "class_code": "060400", "driver": "pcieport", "iommu_group": 10 + 2 * group})
        for fn, (device, class_code) in enumerate((("1eb8", "030200"), ("10f8", "040300"))):
            records.append({"address": f"{gpu}.{fn}", "vendor_id": "10de", "device_id": device,
                            "class_code": class_code, "driver": "vfio-pci",
                            "iommu_group": 11 + 2 * group, "numa_node": node, "upstream": [root]})
    records.append({"address": "0000:18:00.0", "vendor_id": "8086", "device_id": "1593",
                    "class_code": "020000", "driver": "ice", "iommu_group": 21, "numa_node": 0})
    devices = build_pci_inventory(records)
    return {"generation": 1, "pci": list(devices.values()), "usb": []}


class SimulatedAgents:
    """Every host at http://127.0.0.1:<its own port>, served by one event loop; the
    driver asks http://127.0.0.1:<first port>/stats for what the agents were given."""

    def __init__(self, count):
        self.hosts = {f"sim-{number:05d}" for number in range(count)}
        self.devices = json.dumps(inventory_body()).encode()
        self.vms = {}       # host id → {vm name: spec}
        self.given = {}     # (host id, device id) → [vm names it was given to]

    def facts(self, host_id):
        return {"host_id": host_id, "boot_id": BOOT_ID, "hostname": host_id,
                "cpu": {"threads": 64}, "memory_mib": 262144,
                "iommu": {"kernel_enabled": True, "ready": True}}

    def answer(self, host_id, method, target, headers, body):
        """(status, JSON-able or bytes, extra headers)."""
        rest = target.split("?", 1)[0]
        if rest == "/stats":
            doubles = {f"{h} {d}": vms for (h, d), vms in self.given.items() if len(vms) > 1}
            return 200, {"creates": sum(map(len, self.vms.values())), "doubles": doubles}, {}
        if rest == "/v1/health":
            return 200, {"status": "ok", "host_id": host_id, "boot_id": BOOT_ID,
                         "version": "bench", "generation": 1, "libvirt": {"ok": True}}, {}
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, _error("unauthorized", "bad token"), {}
        vms = self.vms.setdefault(host_id, {})
        if rest == "/v1/host":
            return 200, self.facts(host_id), {}
        if rest == "/v1/devices":
            if headers.get("if-none-match") == '"g1"':
                return 304, b"", {"ETag": '"g1"'}
            return 200, self.devices, {"ETag": '"g1"'}
        if rest == "/v1/vms" and method == "POST":
            spec = json.loads(body)
            vms[spec["name"]] = spec
            for device in spec.get("devices", ()):
                self.given.setdefault((host_id, device["id"]), []).append(spec["name"])
            return 201, {"name": spec["name"], "state": "running" if spec.get("start", True)
                         else "stopped", "devices": spec.get("devices", [])}, {}
        if rest == "/v1/vms":
            return 200, {"vms": [{"name": n, "state": "running"} for n in sorted(vms)]}, {}
        if rest.startswith("/v1/vms/"):
            name = rest.split("/")[3]
            if name not in vms:
                return 404, _error("vm_not_found", f"no VM {name}"), {}
            if method == "DELETE":
                del vms[name]
                return 200, {"deleted": name}, {}
            return 200, {"name": name, "state": "running"}, {}
        if rest.startswith("/v1/networks/"):
            return 200, {}, {}
        return 404, _error("not_found", rest), {}

    async def serve(self, ports_file):
        """Listen on one free port per host; write {host id: port} to `ports_file`."""
        ports = {}
        for host_id in sorted(self.hosts):
            server = await asyncio.start_server(
                lambda reader, writer, host_id=host_id: self._connection(host_id, reader, writer),
                "127.0.0.1", 0, backlog=256)
            ports[host_id] = server.sockets[0].getsockname()[1]
        with open(ports_file + ".tmp", "w", encoding="utf-8") as out:
            json.dump(ports, out)
        os.replace(ports_file + ".tmp", ports_file)
        await asyncio.Event().wait()

    async def _connection(self, host_id, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    key, value = header.decode("latin-1").split(":", 1)
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length") or 0))
                status, payload, extra = self.answer(host_id, method, target, headers, body)
                if not isinstance(payload, bytes):
                    payload = json.dumps(payload).encode()
                head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(payload)}",
                        "Content-Type: application/json"]
                head += [f"{key}: {value}" for key, value in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


def _error(code, message):
    return {"error": {"code": code, "message": message, "details": {}}}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(match):
    """CPU seconds (user + system) of the processes whose /proc entry `match`es
    (pid, parent pid, command line)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="latin-1") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode("latin-1")
        except OSError:
            continue
        if match(int(entry), int(fields[1]), command):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def start_controller(url, threads):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": ROOT, "HOSTPLANE_CONTROLLER_CONFIG": "/nonexistent",
           "HOSTPLANE_SERVER_ADMIN_TOKEN": ADMIN_TOKEN, "HOSTPLANE_DATABASE_URL": url,
           "HOSTPLANE_DATABASE_POOL_SIZE": str(threads + 2), "HOSTPLANE_POLL_ENABLED": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--threads", str(threads), "--backlog", "2048", "--timeout", "300", "--keep-alive", "60",
         "controller.app:create_app()"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"http://127.0.0.1:{port}"


def wait_up(url, path="/v1/health", seconds=60):
    import requests
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(url + path, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


class Client:
    """The load's HTTP client: a keep-alive pool of urllib3, not requests, since the
    clients share the machine's CPUs with what they measure (requests cost them about
    twice as much per call). Transport failures raise ConnectionError."""

    def __init__(self):
        import urllib3
        from controller.agents import Answer   # the controller's own reading of urllib3's
        self.answer = Answer
        self.pool = urllib3.PoolManager(maxsize=2, retries=False)
        self.failures = (urllib3.exceptions.HTTPError, OSError)

    def post(self, url, body, headers, timeout):
        try:
            answer = self.pool.request("POST", url, body=json.dumps(body).encode(),
                                       headers={**headers, "Content-Type": "application/json"},
                                       timeout=timeout, retries=False)
        except self.failures as exc:
            raise ConnectionError(str(exc)) from None
        return self.answer(answer.status, answer.headers, answer.data)


def run_all(calls, workers):
    """Run `calls` (functions of a Client) on `workers` threads; their results."""
    local = threading.local()

    def run(call):
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client()
        return call(client)
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, calls))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--vms", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--threads", type=int, default=16, help="per controller process")
    parser.add_argument("--ask", choices=sorted(ASKS), default="pool",
                        help="one device of a pool (default) or one GPU by model")
    parser.add_argument("--serve-agents", metavar="PORTS_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_agents:
        asyncio.run(SimulatedAgents(args.agents).serve(args.serve_agents))
        return
    from controller.db import upgrade
    from tests.test_controller_support import drop_postgres_database, postgres_database
    name, url = postgres_database()   # a throw-away role and database
    processes = []
    try:
        upgrade(url)
        ports_file = f"/tmp/{name}-ports.json"   # nosec B108 - names a random throw-away
        processes.append(subprocess.Popen([sys.executable, os.path.abspath(__file__),
                                           "--serve-agents", ports_file,
                                           "--agents", str(args.agents)], cwd=ROOT))
        deadline = time.monotonic() + 120
        while not os.path.exists(ports_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        with open(ports_file, encoding="utf-8") as found:
            agents = {host_id: f"http://127.0.0.1:{port}" for host_id, port in
                      json.load(found).items()}
        os.unlink(ports_file)
        controllers = []   # after the agents took their ports, none of which they can take
        for _ in range(2):
            process, controller_url = start_controller(url, args.threads)
            processes.append(process)
            controllers.append(controller_url)
        for controller_url in controllers:
            wait_up(controller_url)
        measure(args, controllers, agents, url, {p.pid for p in processes[1:]})
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        drop_postgres_database(name)


def measure(args, controllers, agents, database_url, controller_pids):
    import requests
    database = database_url.rsplit("/", 1)[1]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def register(number):
        body = {"url": agents[f"sim-{number:05d}"], "token": TOKEN}

        def call(client):
            for _ in range(5):   # a dropped connection is asked again (409: it was done)
                try:
                    code = client.post(controllers[number % 2] + "/v1/hosts", body,
                                       headers=admin, timeout=300).status_code
                    return 201 if code == 409 else code
                except ConnectionError:
                    time.sleep(1)
            return "connection error"
        return call
    start = time.perf_counter()
    codes = run_all([register(n) for n in range(args.agents)], 16)
    took = time.perf_counter() - start
    print(f"registered {codes.count(201):,} of {args.agents:,} hosts in {took:.0f} s "
          f"({args.agents / took:.0f}/s; other answers: {sorted(set(codes) - {201})})")

    if args.ask == "pool":
        made = requests.post(controllers[0] + "/v1/device-pools", headers=admin, timeout=60,
                             json={"name": POOL, **GPU})
        made.raise_for_status()
        print(f"pool {POOL}: {made.json().get('size')} devices")

    def create(number):
        body = {"name": f"bench-{number:05d}", "vcpus": 2, "memory_mib": 2048,
                **ASKS[args.ask], "start": True}

        def call(client):
            started = time.perf_counter()
            try:
                answer = client.post(controllers[number % 2] + "/v1/vms", body,
                                     headers=admin, timeout=300)
            except ConnectionError:
                return "connection error", time.perf_counter() - started
            code = answer.status_code
            if code != 201:
                code = f"{code} {answer.json().get('error', {}).get('code')}"
            return code, time.perf_counter() - started
        return call
    for controller_url in controllers:   # each process loads its snapshot before the clock
        run_all([lambda client, u=controller_url: client.post(
            u + "/v1/schedule/explain", {"name": "warm", "vcpus": 1, "memory_mib": 64,
                                         **ASKS[args.ask]}, headers=admin, timeout=120)], 1)
    parts = {   # whose CPU a placement costs: pid and parent pid sets, or a command line
        "controllers": lambda pid, parent, command: parent in controller_pids or
        pid in controller_pids,
        "agents": lambda pid, parent, command: "--serve-agents" in command,
        "PostgreSQL": lambda pid, parent, command: command.startswith("postgres: ")
        and f" {database} " in command,
        "clients": lambda pid, parent, command: pid == os.getpid()}
    before = {name: cpu_seconds(match) for name, match in parts.items()}
    start = time.perf_counter()
    results = run_all([create(n) for n in range(args.vms)], args.clients)
    took = time.perf_counter() - start
    spent = {name: cpu_seconds(match) - before[name] for name, match in parts.items()}
    latencies = sorted(seconds * 1000 for _, seconds in results)
    codes = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    placed = codes.get(201, 0)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    print(f"{args.vms:,} creates asking {args.ask}, {args.clients} clients, 2 controllers: {took:.1f} s, "
          f"{placed / took:.0f} placements/s (goal ≥ 200: {'met' if placed / took >= 200 else 'MISSED'}); "
          f"latency p50 {statistics.median(latencies):.0f} ms, p99 {p99:.0f} ms; "
          f"answers {codes}")
    print("CPU per placement: " + ", ".join(f"{name} {seconds / args.vms * 1000:.1f} ms"
                                            for name, seconds in spent.items())
          + f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    stats = requests.get(agents["sim-00000"] + "/stats", timeout=30).json()
    from sqlalchemy import create_engine, text
    engine = create_engine(database_url)
    with engine.connect() as connection:
        wrong = connection.execute(text(
            "SELECT count(*) FROM (SELECT vms.name FROM vms LEFT JOIN devices ON devices.vm = "
            "vms.name AND devices.type = 'gpu' GROUP BY vms.name HAVING count(devices.id) <> 1)"
            " AS odd")).scalar()
        held = connection.execute(text(
            "SELECT count(*) FROM devices WHERE type = 'gpu' AND vm IS NOT NULL")).scalar()
        vms = connection.execute(text("SELECT count(*) FROM vms")).scalar()
    engine.dispose()
    print(f"double claims: {len(stats['doubles'])} devices given to two VMs by the agents "
          f"({stats['creates']:,} creates seen); {wrong} VMs in the database holding other "
          f"than one GPU; {vms:,} VMs, {held:,} GPUs held")


if __name__ == "__main__":
    main()
