"""A snapshot updated host by host (`Snapshot.apply`) equals one built afresh from the same
rows: same indexes (the hosts of pool matches asked before the update included), same
placements and reasons. The controller's snapshot cache relies
on it to reload only the hosts whose revision moved."""

import dataclasses
import random

import pytest

from hostplane.core.placement_pools import PoolAsk, matching_devices
from hostplane.core.pools import PoolMatch
from hostplane.core.scheduler import (DeviceView, GpuAsk, HostView, PlacementRequest, Policy,
                                      Snapshot, VmView, place)

MODELS = (("10de", "1eb8"), ("10de", "2236"))


def host_rows(rng, number, cluster=None):
    host_id = f"h{number:03d}"
    host = HostView(host_id, cluster or f"c{number % 3}",
                    rng.choice(("connected", "connected", "disconnected")),
                    rng.choice(("enabled", "enabled", "maintenance")), True, True, 32, 65536,
                    rng.randrange(64), rng.randrange(32768))
    devices, vms = [], []
    vendor, product = rng.choice(MODELS)
    slots = rng.randrange(0, 3)
    if number == 5:   # the only host of its model: removing it empties the model's table
        vendor, product, slots = "1002", "740f", 2
    for slot in range(slots):
        vm = f"vm-{host_id}-{slot}" if rng.random() < 0.3 else None
        status = "attached" if vm else "ready"
        for function, kind in ((0, "gpu"), (1, "gpu-audio")):
            devices.append(DeviceView(host_id, "pci", f"0000:{0x3b + slot:02x}:00.{function}",
                                      kind, vendor, product, "enabled", status, vm,
                                      rng.random() < 0.5, True, 11 + slot, None))
        if vm:
            vms.append(VmView(vm, host_id, "running", rng.choice((None, "db", "web"))))
    devices.append(DeviceView(host_id, "pci", "0000:18:00.0", "nic", "8086", "1593", "enabled",
                              "ready", None, False, True, None, None))
    shared_stick = "0781:5567:SHARED" if number % 7 == 0 else f"0781:5567:S{number:03d}"
    devices.append(DeviceView(host_id, "usb", shared_stick, "usb", "0781", "5567", "enabled",
                              "ready", None, False, True, None, 2))
    return host, sorted(devices, key=lambda d: d.id), vms


def flatten(parts):
    hosts = [parts[h][0] for h in sorted(parts)]
    devices = [d for h in sorted(parts) for d in parts[h][1]]
    vms = [v for h in sorted(parts) for v in parts[h][2]]
    return hosts, devices, vms


def comparable(index, pool_matches=None):
    """The index's tables; with `pool_matches`, the hosts of these pool matches worked
    out afresh (an index built afresh has been asked about no pool yet)."""
    tables = {name: value for name, value in vars(index).items()}
    if pool_matches is not None:
        tables["pool_holders"] = {
            match: {host_id for host_id in index.pci_models.get(match.model, {})
                    if matching_devices(match, host_id, index)} for match in pool_matches}
    tables["held"] = {vm: sorted(held, key=lambda d: (d.host_id, d.id))
                      for vm, held in index.held.items()}
    return tables


REQUESTS = [
    PlacementRequest("r1", 2, 1024, gpus=(GpuAsk(vendor_id="10de", device_id="1eb8"),)),
    PlacementRequest("r2", 2, 1024, gpus=(GpuAsk(vendor_id="10de", device_id="2236", count=2),)),
    PlacementRequest("r3", 2, 1024, usb=("0781:5567:SHARED",)),
    PlacementRequest("r4", 4, 2048, anti_affinity_group="db", tenant="acme",
                     gpus=(GpuAsk(id="0000:3b:00.0"),)),
    PlacementRequest("r5", 1, 512, cluster="c1"),
    PlacementRequest("r6", 2, 1024,
                     pools=(PoolAsk("t4", PoolMatch("10de", "1eb8", type="gpu")),)),
    PlacementRequest("r7", 2, 1024, pools=(PoolAsk("a10", PoolMatch("10de", "2236"), 2),),
                     locality="same-switch"),
]


@pytest.mark.parametrize("seed", range(8))
def test_snapshot_updated_in_place_equals_one_built_afresh(seed):
    rng = random.Random(seed)
    parts = {}
    for number in range(40):
        host, devices, vms = host_rows(rng, number)
        parts[host.id] = (host, devices, vms)
    cached = Snapshot.build(*flatten(parts))
    for _round in range(5):
        changes = {}
        picked = rng.sample(sorted(parts), 6)
        if _round == 0 and "h005" in parts:
            picked = ["h005"] + [h for h in picked if h != "h005"][:5]
        for host_id in picked:
            what = rng.randrange(4)
            if what == 0:     # gone
                del parts[host_id]
                changes[host_id] = None
                continue
            host, devices, vms = parts[host_id]
            if what == 1:     # capacity or state moved
                host = dataclasses.replace(host, used_vcpus=rng.randrange(64),
                                           status=rng.choice(("connected", "disconnected")))
            elif what == 2:   # a device claimed or released
                devices = [dataclasses.replace(d, vm=None, status="ready") if d.vm else
                           dataclasses.replace(d, vm=f"vm-new-{host_id}", status="attached")
                           if d.kind == "pci" and rng.random() < 0.5 else d for d in devices]
            else:             # rebuilt from scratch, maybe in another cluster
                host, devices, vms = host_rows(rng, int(host_id[1:]), rng.choice(("c0", "c9")))
            parts[host_id] = changes[host_id] = (host, devices, vms)
        for number in rng.sample(range(40, 60), 2):   # newcomers
            host, devices, vms = host_rows(rng, number)
            parts[host.id] = changes[host.id] = (host, devices, vms)
        cached.apply(changes)
        fresh = Snapshot.build(*flatten(parts))
        assert cached.hosts == fresh.hosts
        assert comparable(cached.index) == comparable(fresh.index, cached.index.pool_holders)
        for request in REQUESTS:
            for policy in (Policy(), Policy(strategy_mode="enforced")):
                assert place(request, cached, policy) == place(request, fresh, policy)
