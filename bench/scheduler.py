"""Placement latency on a generated cluster: 10,000 or 100,000 hosts, 10 devices each.

Goals (issues 5 and 17, at 100,000 hosts / 1,000,000 devices on 2 cores): median ≤ 10 ms
for one GPU or pool device and for 4 GPUs or pool devices under one switch, ≤ 20 ms for a
device-free VM. Prints the snapshot build time and peak RSS apart, then median, p95,
best and first of repeated calls (time.perf_counter) of `choose` (what a create runs:
the chosen host alone, through the capacity index) and of `place` (what explain runs:
every host judged) for:
  - one GPU by vendor/device;
  - two GPUs by vendor/device plus one USB device (which pins the VM to the USB's host);
  - no device at all, so that every host is judged in full (no goal set by the issue);
  - one GPU by vendor/device under enforced anti-affinity and strategy;
  - four GPUs 10de:20b5 under one PCIe switch (locality same-switch, required), on the
    eight-GPU servers (two switches of four, one per NUMA node);
  - one device of pool "t4" (10de:1eb8 of type gpu: a match beyond the model);
  - four devices of pool "a100" (10de:20b5) under one switch, as the GPUs above.
Then, with --controller, the same cluster written to a database (a temporary SQLite file,
or --database-url) and one GPU explained end to end through the controller's placement
code (controller.placement.explain: revision check, cached snapshot, place): the first
call (full load), calls with nothing changed, and calls after one host changed.

    .venv/bin/python bench/scheduler.py [--hosts 100000] [--runs 50] [--seed 5] [--controller]
"""

import argparse
import gc
import os
import random
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hostplane.core.placement_pools import PoolAsk  # noqa: E402
from hostplane.core.placement_topology import NumaNode  # noqa: E402
from hostplane.core.pools import PoolMatch  # noqa: E402
from hostplane.core.scheduler import (DeviceView, GpuAsk, HostView, PlacementRequest,  # noqa: E402
                                      Policy, Snapshot, VmView, choose, place)

GPU_MODELS = (("10de", "1eb8", "10f8"), ("10de", "20b5", "1aef"), ("10de", "2204", "1aef"),
              ("1002", "740f", "ab28"))
DEVICES_PER_HOST = 10


def generate(host_count, seed):
    """(hosts, devices, vms): a third of hosts carry GPUs — 2 (+ audio), or 8 behind two
    switches for 10de:20b5 — and all carry NICs (and USB, but the 8-GPU servers)."""
    rng = random.Random(seed)
    hosts, devices, vms = [], [], []
    for number in range(host_count):
        host_id = f"host-{number:05d}"
        status = "disconnected" if rng.random() < 0.02 else "connected"
        state = "maintenance" if rng.random() < 0.01 else "enabled"
        threads = rng.choice((32, 64, 128))
        memory = threads * 4096
        host_devices = _host_devices(host_id, number, rng)
        held = [d for d in host_devices if d.vm]
        for device in held:
            if device.type == "gpu":
                vms.append(VmView(device.vm, host_id, "running",
                                  anti_affinity_group=f"group-{rng.randrange(50)}"))
        used_vcpus = rng.randrange(threads * 3)
        nodes = (NumaNode(0, threads // 2, memory // 2), NumaNode(1, threads // 2, memory // 2))
        hosts.append(HostView(host_id, f"cluster-{number % 10}", status, state, True, True,
                              threads, memory, used_vcpus, rng.randrange(memory // 2), nodes))
        devices.extend(host_devices)
    return hosts, devices, vms


def _host_devices(host_id, number, rng):
    def pci(bus, fn, kind, vendor, product, group, vm=None, node=None, upstream=()):
        return DeviceView(host_id, "pci", f"0000:{bus:02x}:00.{fn}", kind, vendor, product,
                          "enabled", "attached" if vm else "ready", vm, rng.random() < 0.3,
                          kind != "bridge", group, None, None, node, upstream)

    def usb(index):
        return DeviceView(host_id, "usb", f"0781:5567:H{number:05d}U{index}", "usb", "0781",
                          "5567", "enabled", "ready", None, False, True, None, 2)

    if number % 3 == 0 and GPU_MODELS[(number // 3) % len(GPU_MODELS)][1] == "20b5":
        found = []
        for node, switch in enumerate((0x10, 0x20)):
            for slot in range(4):
                bus = switch + 2 + slot
                vm = f"vm-{number}-{bus}" if rng.random() < 0.3 else None
                upstream = (f"0000:00:{switch // 8:02x}.0", f"0000:{switch:02x}:00.0",
                            f"0000:{switch + 1:02x}:{slot:02x}.0")
                found.append(pci(bus, 0, "gpu", "10de", "20b5", bus, vm, node, upstream))
        found += [pci(0x18, 0, "nic", "8086", "1593", 21), pci(0x18, 1, "nic", "8086", "1593", 22)]
    elif number % 3 == 0:
        vendor, gpu, audio = GPU_MODELS[(number // 3) % len(GPU_MODELS)]
        found = [pci(0x3a, 0, "bridge", "8086", "2030", 10)]
        for slot, bus in enumerate((0x3b, 0xaf)):
            vm = f"vm-{number}-{slot}" if rng.random() < 0.3 else None
            found += [pci(bus, 0, "gpu", vendor, gpu, 11 + slot, vm),
                      pci(bus, 1, "gpu-audio", vendor, audio, 11 + slot, vm)]
        found += [pci(0x18, 0, "nic", "8086", "1593", 21), pci(0x18, 1, "nic", "8086", "1593", 22),
                  pci(0x5e, 0, "nvme", "144d", "a808", 31), usb(0), usb(1)]
    else:
        found = [pci(0x18, fn, "nic", "8086", "1889", 20 + fn) for fn in range(6)]
        found += [pci(bus, 0, "nvme", "144d", "a808", group)
                  for bus, group in ((0x5e, 31), (0x5f, 32))]
        found += [usb(0), usb(1)]
    assert len(found) == DEVICES_PER_HOST
    return found


def timed(runs, call):
    """(last result, median ms, p95 ms, best ms, first ms): the first call may fill a
    per-snapshot cache (the hosts of a pool matched beyond its model)."""
    gc.collect()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = call()
        samples.append((time.perf_counter() - start) * 1000)
    first = samples[0]
    samples.sort()
    p95 = samples[max(0, int(len(samples) * 0.95) - 1)]
    return result, statistics.median(samples), p95, samples[0], first


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--controller", action="store_true",
                        help="also time explain through the controller's cached snapshot")
    parser.add_argument("--database-url", help="for --controller (default: a temporary "
                        "SQLite file); the database is filled, so use a throw-away one")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after building the snapshot, as a long-lived "
                             "controller may: young collections then skip the snapshot")
    args = parser.parse_args()
    hosts, devices, vms = generate(args.hosts, args.seed)
    start = time.perf_counter()
    snapshot = Snapshot.build(hosts, devices, vms)
    build_ms = (time.perf_counter() - start) * 1000
    if args.gc_freeze:
        gc.freeze()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"snapshot: {len(hosts):,} hosts, {len(devices):,} devices, {len(vms):,} VMs; "
          f"build {build_ms:.0f} ms; peak RSS {peak_mib:.0f} MiB (generated views included); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"gc.freeze: {'yes' if args.gc_freeze else 'no'}")
    usb_host = next(h for n, h in enumerate(hosts) if n % 12 == 0 and h.status == "connected"
                    and h.state == "enabled")
    usb_id = f"0781:5567:H{hosts.index(usb_host):05d}U0"
    cases = [
        ("1 GPU 10de:1eb8", PlacementRequest("bench", 4, 8192,
                                             gpus=(GpuAsk(vendor_id="10de", device_id="1eb8"),)),
         Policy()),
        ("2 GPUs 10de:1eb8 + 1 USB", PlacementRequest(
            "bench", 4, 8192, gpus=(GpuAsk(vendor_id="10de", device_id="1eb8", count=2),),
            usb=(usb_id,)), Policy()),
        ("no device", PlacementRequest("bench", 4, 8192), Policy()),
        ("1 GPU, anti-affinity + enforced strategy", PlacementRequest(
            "bench", 4, 8192, gpus=(GpuAsk(vendor_id="10de", device_id="1eb8"),),
            anti_affinity_group="group-7"), Policy(strategy_mode="enforced")),
        ("4 GPUs 10de:20b5 same-switch", PlacementRequest(
            "bench", 16, 65536, gpus=(GpuAsk(vendor_id="10de", device_id="20b5", count=4),),
            locality="same-switch", locality_mode="required", numa="preferred"), Policy()),
        ("1 pool device (t4)", PlacementRequest(
            "bench", 4, 8192, pools=(PoolAsk("t4", PoolMatch("10de", "1eb8", type="gpu")),)),
         Policy()),
        ("4 pool devices (a100) same-switch", PlacementRequest(
            "bench", 16, 65536, pools=(PoolAsk("a100", PoolMatch("10de", "20b5"), 4),),
            locality="same-switch", locality_mode="required", numa="preferred"), Policy()),
    ]
    goal = {"1 GPU 10de:1eb8": 10.0, "no device": 20.0, "4 GPUs 10de:20b5 same-switch": 10.0,
            "1 pool device (t4)": 10.0, "4 pool devices (a100) same-switch": 10.0}
    for title, request, policy in cases:
        for how, call in (("choose", choose), ("place", place)):
            placement, median, p95, best, first = timed(
                args.runs, lambda: call(request, snapshot, policy))
            chosen = placement.chosen.host_id if placement.chosen else "none"
            verdict = ""
            if title in goal and how == "choose":
                verdict = "  (goal ≤ {:.0f} ms: {})".format(
                    goal[title], "met" if median <= goal[title] else "MISSED")
            print(f"{how} {title:40s} median {median:6.2f} ms  p95 {p95:6.2f} ms  "
                  f"best {best:6.2f} ms  first {first:6.2f} ms  "
                  f"candidates {len(placement.ranked):5d}  "
                  f"rejected {len(placement.rejected):6d}  chosen {chosen}{verdict}")
    if args.controller:
        with tempfile.TemporaryDirectory(prefix="hostplane-bench-") as scratch:
            controller_figures(args.database_url or f"sqlite:///{scratch}/bench.db",
                               hosts, devices, vms, args.runs)


def controller_figures(url, hosts, devices, vms, runs):
    """Explain through controller.placement on a database holding the generated cluster."""
    from controller.db import Database, upgrade
    from controller.db.models import Host
    from controller.placement import explain
    from controller.snapshot_cache import cache_for

    upgrade(url)
    db = Database(url)
    start = time.perf_counter()
    fill(db, hosts, devices, vms)
    print(f"controller database {url.split(':', 1)[0]}: filled in "
          f"{time.perf_counter() - start:.1f} s")
    request = PlacementRequest("bench", 4, 8192, gpus=(GpuAsk(vendor_id="10de", device_id="1eb8"),))
    start = time.perf_counter()
    explain(db, request, Policy())
    print(f"{'explain, first call (full load)':42s} {(time.perf_counter() - start) * 1000:8.0f} ms")
    _, median, p95, best, _ = timed(runs, lambda: explain(db, request, Policy()))
    print(f"{'explain, nothing changed':42s} median {median:6.2f} ms  p95 {p95:6.2f} ms  "
          f"best {best:6.2f} ms")
    changed = hosts[len(hosts) // 2].id
    samples = []
    for number in range(runs):
        with db.write() as session:   # one host changes, as a poll or a PATCH would
            session.get(Host, changed).state = "maintenance" if number % 2 == 0 else "enabled"
        start = time.perf_counter()
        explain(db, request, Policy())
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    print(f"{'explain, one host changed before each':42s} median {statistics.median(samples):6.2f} ms"
          f"  p95 {samples[max(0, int(len(samples) * 0.95) - 1)]:6.2f} ms  best {samples[0]:6.2f} ms"
          f"  (reloads: {cache_for(db).reloads})")
    db.close()


def fill(db, hosts, devices, vms):
    from sqlalchemy import insert

    from controller.db.models import Device, Host, Vm, first_revision, utcnow
    now = utcnow()
    used = {}
    for vm in vms:
        used[vm.host_id] = used.get(vm.host_id, 0) + 1
    with db.write() as session:
        session.execute(insert(Host), [
            {"id": h.id, "url": f"http://127.0.0.1:1/{h.id}", "token": "t", "cluster": h.cluster,
             "status": h.status, "state": h.state, "iommu_enabled": True, "iommu_ready": True,
             "cpu_threads": h.cpu_threads, "memory_mib": h.memory_mib, "failures": 0,
             "created_at": now, "revision": first_revision()} for h in hosts])
        session.execute(insert(Device), [
            {"host_id": d.host_id, "id": d.id, "kind": d.kind, "type": d.type,
             "vendor_id": d.vendor_id, "product_id": d.product_id, "name": d.id,
             "state": d.state, "status": d.status, "vm": d.vm, "shared": d.shared,
             "assignable": d.assignable, "iommu_group": d.iommu_group,
             "usb_major": d.usb_major, "numa_node": d.numa_node, "upstream": list(d.upstream),
             "facts": {}, "created_at": now, "updated_at": now}
            for d in devices])
        session.execute(insert(Vm), [
            {"name": v.name, "host_id": v.host_id, "vcpus": 4, "memory_mib": 8192,
             "state": v.state, "anti_affinity_group": v.anti_affinity_group, "spec": {},
             "created_at": now} for v in vms])


if __name__ == "__main__":
    main()
