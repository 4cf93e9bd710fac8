"""Inventory speed on a generated ~1,000-device GPU server, against lspci on the same tree.

    .venv/bin/python bench/inventory.py [--runs 15] [--http]

Prints (all medians of repeated runs):
- full inventory, in-process: sysfs walk + udev-free USB read + models + JSON body;
- `lspci -Dmmnnv -A linux-sysfs -O sysfs.path=DIR/bus/pci` over the same tree, as a
  process (it is a C program; its run includes loading pci.ids, as ours does once);
- the ratio (goal: ≤ 1.0);
- `hostplane-agent inventory` as a whole process (interpreter start, imports, scan,
  JSON printed) against lspci, run alternately so both see the same load (goal ≤ 1.5):
  installed from a wheel, from this checkout, without a state directory, pretty-printed;
- one hot-plug update (re-read of the changed function only) against a full scan;
- with --http: GET /v1/devices requests/s under gunicorn with 2 workers, via wrk
  (Debian package `wrk`), for the full body and for the 304 path.
"""

import argparse
import compileall
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
    """Whole processes, side by side: what an operator waits for at the prompt.

    Ours as installed (a wheel in a fresh venv, as the Ansible role installs it: pip
    writes the launcher and compiles the modules), as run from this checkout (the dev
    venv's editable install adds an import hook to every start), and without a state
    directory (names read from pci.ids/hwdb each run), alternating with lspci.
    """
    if shutil.which("lspci") is None:
        return
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scratch = os.path.dirname(root)
    state = os.path.join(scratch, "state")
    os.makedirs(state, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    checkout_env = dict(base_env, PYTHONPATH=os.pathsep.join(filter(None, [
        repo, os.environ.get("PYTHONPATH")])))
    compileall.compile_dir(os.path.join(repo, "agent"), quiet=1)   # as an install would
    compileall.compile_dir(os.path.join(repo, "hostplane"), quiet=1)
    script = os.path.join(os.path.dirname(sys.executable), "hostplane-agent")
    checkout = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "agent.cli"]
    arguments = ["inventory", "--compact", "--sysfs-root", root]
    series = {}
    installed = install_wheel(repo, os.path.join(scratch, "venv"), base_env)
    if installed:
        series["installed (wheel in a venv)"] = (
            [installed, *arguments], dict(base_env, HOSTPLANE_HOST_STATE_DIR=state))
    series["this checkout (editable venv)"] = (
        [*checkout, *arguments], dict(checkout_env, HOSTPLANE_HOST_STATE_DIR=state))
    series["checkout, no state dir (names from the databases)"] = (
        [*checkout, *arguments],
        dict(checkout_env, HOSTPLANE_HOST_STATE_DIR=os.path.join(scratch, "absent")))
    series["checkout, pretty JSON (no --compact)"] = (
        [*checkout, *arguments[:1], *arguments[2:]],
        dict(checkout_env, HOSTPLANE_HOST_STATE_DIR=state))
    series["lspci -Dmmnnv"] = (
        ["lspci", "-Dmmnnv", "-A", "linux-sysfs", "-O", f"sysfs.path={root}/bus/pci"], base_env)
    wall = {name: [] for name in series}
    cpu = {name: [] for name in series}
    for _ in range(runs + 1):   # the first round warms the page cache and the names
        for name, (command, env) in series.items():
            before = _children_cpu()
            started = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True, env=env, cwd=scratch)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(_children_cpu() - before)
    lspci_wall, lspci_cpu = (median_ms(samples["lspci -Dmmnnv"][1:]) for samples in (wall, cpu))
    print(f"whole process, medians of {runs} alternating runs (wall; CPU user+sys, steadier "
          "on a busy machine), ratio to lspci (goal <= 1.5):")
    for name in series:
        ours_wall, ours_cpu = median_ms(wall[name][1:]), median_ms(cpu[name][1:])
        print(f"  {name:52s} {ours_wall:6.1f} ms ({ours_wall / lspci_wall:.2f}x); "
              f"CPU {ours_cpu:6.1f} ms ({ours_cpu / lspci_cpu:.2f}x)")


def install_wheel(repo, venv_dir, env):
    """`hostplane-agent` of a wheel of this checkout installed into a new venv, or None.
    `env` has no PYTHONPATH: pip would take the checkout on it for an installed copy."""
    import venv
    wheels = os.path.join(os.path.dirname(venv_dir), "wheels")
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                        "--no-build-isolation", "-w", wheels, repo],
                       capture_output=True, check=True, env=env)
        venv.EnvBuilder(with_pip=False, symlinks=True).create(venv_dir)
        wheel = os.path.join(wheels, next(n for n in os.listdir(wheels) if n.endswith(".whl")))
        subprocess.run([sys.executable, "-m", "pip", "--python",
                        os.path.join(venv_dir, "bin", "python"), "install", "-q", "--no-deps",
                        "--no-index", wheel], capture_output=True, check=True, env=env)
    except (subprocess.CalledProcessError, OSError, StopIteration) as exc:
        print(f"installed command: not measured (building or installing the wheel failed: "
              f"{getattr(exc, 'stderr', b'') or exc})")
        return None
    return os.path.join(venv_dir, "bin", "hostplane-agent")


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
