"""The pure pool rule (hostplane.core.pools) and pool asks in the scheduler, on the
described test hosts (tests/hosts.py small_gpu_host: two T4 GPUs with their audio
functions, an SR-IOV NIC 8086:1593 with two VFs 8086:1889, a Samsung NVMe)."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostplane.core.ids import InvalidId
from hostplane.core.placement_devices import first_free_gpu, pick_pci
from hostplane.core.placement_pools import PoolAsk, one_pool_shortcut
from hostplane.core.pools import Pool, PoolMatch, overlapping, pool_counts, pool_of
from hostplane.core.scheduler import place
from tests.hosts import small_gpu_host
from tests.test_scheduler import host, inventory, pci_models, request, world
from tests.test_scheduler_properties import MODELS, worlds

T4 = PoolMatch("10de", "1eb8")
VFS = PoolMatch("8086", "1889", vf_of="8086:1593")


def devices(host_id="host-a", **overrides):
    """DeviceViews with what pool matches read (subsystem ids, physfn) as reported."""
    reported = pci_models(small_gpu_host())
    return [dataclasses.replace(
        view, subsystem_vendor_id=reported[view.id]["subsystem_vendor_id"],
        subsystem_device_id=reported[view.id]["subsystem_device_id"],
        physfn=reported[view.id]["physfn"]) if view.kind == "pci" else view
        for view in inventory(host_id, small_gpu_host(), **overrides)]


def test_a_vf_is_in_the_pool_of_its_pf_model_and_nothing_else_is():
    snapshot = world([host("host-a")], devices())
    index = snapshot.index
    pools = [Pool("t4", T4), Pool("vfs", VFS)]
    found = {}
    for device in snapshot.devices:
        pf = index.device("host-a", "pci", device.physfn) if device.physfn else None
        pf_model = f"{pf.vendor_id}:{pf.product_id}" if pf else None
        found[device.id] = pool_of(pools, device, pf_model)
    assert {d for d, pool in found.items() if pool == "vfs"} == {"0000:18:01.0", "0000:18:01.1"}
    assert {d for d, pool in found.items() if pool == "t4"} == {"0000:3b:00.0", "0000:af:00.0"}
    assert found["0000:18:00.0"] is None   # the PF itself
    assert not VFS.fits(snapshot.index.device("host-a", "pci", "0000:18:01.0"), "8086:dead")


def test_matches_overlap_unless_a_field_both_set_differs():
    assert overlapping(PoolMatch("10de", "1eb8", type="gpu"), [Pool("t4", T4)])
    assert not overlapping(PoolMatch("10de", "1eb8", subsystem_vendor_id="1028"),
                           [Pool("t4", PoolMatch("10de", "1eb8", subsystem_vendor_id="10de"))])
    assert not overlapping(PoolMatch("10de", "2236"), [Pool("t4", T4)])


@pytest.mark.parametrize("fields", [
    {"vendor_id": "10de"}, {"vendor_id": "10de", "device_id": "xyz1"},
    {"vendor_id": "10de", "device_id": "1eb8", "vf_of": "10de"},
    {"vendor_id": "10de", "device_id": "1eb8", "type": "GPU!"}])
def test_malformed_matches_are_refused(fields):
    with pytest.raises(InvalidId):
        PoolMatch.parse(fields)


def test_pool_counts_free_attached_unavailable_per_host():
    views = [d for d in devices("host-a", **{"0000:3b:00.0": {"status": "attached",
                                                              "vm": "vm-1"}})
             + devices("host-b", **{"0000:af:00.0": {"state": "disabled"}})
             if T4.fits(d)]
    counts = pool_counts(views)
    assert (counts["size"], counts["free"], counts["attached"], counts["unavailable"]) == (
        4, 2, 1, 1)
    assert counts["hosts"]["host-a"] == {"size": 2, "free": 1, "attached": 1, "unavailable": 0}
    # a free device on a host that takes no placement (disconnected, ...) is not free
    assert pool_counts(views, {"host-a"})["hosts"]["host-a"] == {
        "size": 2, "free": 0, "attached": 1, "unavailable": 1}


def test_pool_ask_claims_each_device_with_its_iommu_group_and_says_what_is_short():
    snapshot = world([host("host-a"), host("host-b")], devices("host-a"))
    placement = place(request(pools=[PoolAsk("t4", T4, 2), PoolAsk("vfs", VFS, 1)]), snapshot)
    assert placement.chosen.host_id == "host-a"
    assert set(placement.chosen.devices) == {
        ("pci", "0000:3b:00.0"), ("pci", "0000:3b:00.1"), ("pci", "0000:af:00.0"),
        ("pci", "0000:af:00.1"), ("pci", "0000:18:01.0")}
    assert placement.rejected == {"host-b": ("no device of pool t4 on this host",
                                             "no device of pool vfs on this host")}
    held = world([host("host-a")], devices(**{"0000:3b:00.1": {"status": "attached",
                                                                  "vm": "vm-9"}}))
    refused = place(request(pools=[PoolAsk("t4", T4, 2)]), held)
    assert refused.chosen is None
    assert refused.rejected["host-a"] == (
        "IOMMU group 11 not viable: 0000:3b:00.1 attached to vm-9",
        "only 1 of 2 devices of pool t4 free")


def test_pool_ask_count_is_1_to_64():
    for count in (0, 65):
        with pytest.raises(InvalidId):
            PoolAsk("t4", T4, count)


@settings(max_examples=150, deadline=None)
@given(worlds(), st.sampled_from(MODELS + (("10de", "10f8"),)))
def test_one_pool_device_shortcut_answers_what_the_full_walk_answers(snapshot, model):
    ask = PoolAsk("p", PoolMatch(*model), 1)
    shortcut = one_pool_shortcut(request(pools=[ask]), snapshot.index)
    for host_view in snapshot.hosts:
        quick = first_free_gpu(shortcut, host_view.id, snapshot.index)
        devices, reasons = pick_pci((), host_view.id, snapshot.index, False, pools=(ask,))
        assert quick == (devices if not reasons else None)
