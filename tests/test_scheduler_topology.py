"""NUMA and PCIe locality: GPUs under one switch first, then on one NUMA node; a VM asking
`numa: required` gets its devices, vCPUs and memory on one node, and the node chosen is
named for the agent to pin the VM there.

The hosts are two-socket GPU servers as their inventories describe them: each GPU's NUMA
node and its upstream chain (root port, switch upstream port, switch downstream port).
"""

import pytest

from hostplane.core.placement_topology import NumaNode
from hostplane.core.scheduler import (DeviceView, GpuAsk, HostView, PlacementRequest, Policy,
                                      Snapshot, VmView, choose, place)

A100 = ("10de", "20b5")
TWO_NODES = (NumaNode(0, 32, 262144), NumaNode(1, 32, 262144))


def server(host_id, used_vcpus=0, numa_nodes=TWO_NODES):
    return HostView(host_id, "c1", "connected", "enabled", True, True, 64, 524288,
                    used_vcpus, 0, numa_nodes)


def gpu(host_id, bus, switch, node, vm=None):
    """A GPU at 0000:<bus>:00.0 in its own IOMMU group, below `switch` (None: right under
    its root port)."""
    root = f"0000:00:{bus % 32:02x}.0"
    upstream = (root, switch, f"0000:{bus - 1:02x}:08.0") if switch else (root,)
    return DeviceView(host_id, "pci", f"0000:{bus:02x}:00.0", "gpu", *A100, "enabled",
                      "attached" if vm else "ready", vm, False, True, bus, None, None, node,
                      upstream)


def split_server(host_id, used_vcpus=0):
    """4 free A100s: 2 under switch 0000:10:00.0 (node 0), 2 under 0000:20:00.0 (node 1)."""
    return [gpu(host_id, 0x12, "0000:10:00.0", 0), gpu(host_id, 0x14, "0000:10:00.0", 0),
            gpu(host_id, 0x22, "0000:20:00.0", 1), gpu(host_id, 0x24, "0000:20:00.0", 1)]


def one_switch_server(host_id, used_vcpus=0):
    """4 free A100s under switch 0000:40:00.0 (node 1), 1 more on node 0 under none."""
    return [gpu(host_id, 0x42, "0000:40:00.0", 1), gpu(host_id, 0x44, "0000:40:00.0", 1),
            gpu(host_id, 0x46, "0000:40:00.0", 1), gpu(host_id, 0x48, "0000:40:00.0", 1),
            gpu(host_id, 0x05, None, 0)]


def a100s(count=4, **fields):
    values = dict(name="train", vcpus=8, memory_mib=65536,
                  gpus=(GpuAsk(vendor_id=A100[0], device_id=A100[1], count=count),))
    values.update(fields)
    return PlacementRequest(**values)


def world():
    # host-a has more room (the capacity score alone prefers it), host-b one switch
    return Snapshot.build([server("host-a"), server("host-b", used_vcpus=100)],
                          split_server("host-a") + one_switch_server("host-b"), [])


def gpu_ids(candidate):
    return sorted(device_id for _, device_id in candidate.devices)


def test_four_gpus_under_one_switch_beat_more_free_cpu_when_locality_is_preferred():
    placement = place(a100s(locality="same-switch"), world())
    assert [c.host_id for c in placement.ranked] == ["host-b", "host-a"]
    assert gpu_ids(placement.chosen) == ["0000:42:00.0", "0000:44:00.0", "0000:46:00.0",
                                         "0000:48:00.0"]
    assert placement.chosen.numa_node is None   # pinned only when numa is asked
    assert placement.ranked[1].found == (
        "4 GPUs 10de:20b5 free: 2 under switch 0000:10:00.0, 2 under switch 0000:20:00.0; "
        "NUMA node 0: 2, NUMA node 1: 2")
    assert choose(a100s(locality="same-switch"), world()).chosen == placement.chosen


def test_without_a_locality_policy_the_roomier_host_wins_as_before():
    assert place(a100s(), world()).chosen.host_id == "host-a"


def test_same_switch_required_rejects_a_host_whose_gpus_span_two_switches():
    placement = place(a100s(locality="same-switch", locality_mode="required"), world())
    assert [c.host_id for c in placement.ranked] == ["host-b"]
    assert placement.rejected["host-a"] == (
        "no 4 free GPUs under one switch (4 GPUs 10de:20b5 free: 2 under switch "
        "0000:10:00.0, 2 under switch 0000:20:00.0; NUMA node 0: 2, NUMA node 1: 2)",)


def test_two_gpus_take_one_switch_of_a_split_host_best_fit_first():
    snapshot = Snapshot.build([server("host-a")], split_server("host-a") + [
        gpu("host-a", 0x32, "0000:30:00.0", 1), gpu("host-a", 0x34, "0000:30:00.0", 1),
        gpu("host-a", 0x36, "0000:30:00.0", 1)], [])
    chosen = place(a100s(2, locality="same-switch", numa="preferred"), snapshot).chosen
    # three switches can give two; the smallest (then lowest) is taken, the 3-GPU one kept
    assert gpu_ids(chosen) == ["0000:12:00.0", "0000:14:00.0"]
    assert chosen.numa_node == 0


def test_same_numa_takes_gpus_on_one_node_across_its_switches():
    snapshot = Snapshot.build([server("host-a")], [
        gpu("host-a", 0x12, "0000:10:00.0", 0), gpu("host-a", 0x22, "0000:20:00.0", 1),
        gpu("host-a", 0x32, "0000:30:00.0", 1)], [])
    request = a100s(2, locality="same-numa", locality_mode="required", numa="preferred")
    chosen = place(request, snapshot).chosen
    assert gpu_ids(chosen) == ["0000:22:00.0", "0000:32:00.0"]
    assert chosen.numa_node == 1


def test_numa_required_pins_the_vm_where_its_gpus_are_if_that_node_has_room():
    snapshot = Snapshot.build(
        [server("host-a")], [gpu("host-a", 0x12, "0000:10:00.0", 0),
                             gpu("host-a", 0x22, "0000:20:00.0", 1)],
        [VmView("big", "host-a", "running", numa_node=0, vcpus=124, memory_mib=1024)])
    request = a100s(1, numa="required")
    chosen = place(request, snapshot).chosen
    # node 0's 32 threads x 4 overcommit = 128 vCPUs, 124 taken by "big": only node 1 has 8
    assert (gpu_ids(chosen), chosen.numa_node) == (["0000:22:00.0"], 1)


def test_numa_required_refuses_a_host_whose_node_cannot_hold_the_vm():
    snapshot = Snapshot.build([server("host-a")], [gpu("host-a", 0x12, "0000:10:00.0", 0)], [])
    request = a100s(1, numa="required", memory_mib=300000)
    placement = place(request, snapshot)
    assert placement.chosen is None
    assert placement.rejected["host-a"] == (
        "no NUMA node has room for 8 vCPUs and 300000 MiB (node 0: 128 vCPUs, 262144 MiB "
        "free, node 1: 128 vCPUs, 262144 MiB free)",)
    preferred = place(a100s(1, numa="preferred", memory_mib=300000),
                      snapshot).chosen
    assert (preferred.host_id, preferred.numa_node) == ("host-a", None)


def test_numa_required_on_a_host_that_has_not_reported_its_nodes_is_refused():
    snapshot = Snapshot.build([server("host-a", numa_nodes=())], split_server("host-a"), [])
    placement = place(a100s(numa="required"), snapshot)
    assert placement.rejected["host-a"] == ("host NUMA nodes not reported",)


def test_a_device_free_vm_asking_numa_goes_to_the_node_with_most_room():
    snapshot = Snapshot.build([server("host-a")], [], [
        VmView("web", "host-a", "running", numa_node=0, vcpus=16, memory_mib=1024)])
    chosen = place(PlacementRequest("db", 4, 4096, numa="preferred"), snapshot).chosen
    assert chosen.numa_node == 1
    assert choose(PlacementRequest("db", 4, 4096, numa="required"), snapshot).chosen == \
        place(PlacementRequest("db", 4, 4096, numa="required"), snapshot).chosen


@pytest.mark.parametrize("field, value", [("numa", "strict"), ("locality", "same-rack"),
                                          ("locality_mode", "maybe")])
def test_unknown_policies_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        PlacementRequest("vm", 1, 1, **{field: value})


def test_locality_policies_do_not_change_a_default_placement():
    request = a100s()
    assert place(request, world(), Policy()) == place(
        a100s(locality="any", numa="none"), world(), Policy())


def test_numa_required_follows_a_device_asked_by_id_that_is_not_a_gpu():
    """The lab's case: a NIC on node 1 asked by address with `numa: required` pins the VM
    to node 1 (its node), not to the node with the most room; a NIC split from the VM's
    node (node 1 has 8 threads, 32 vCPUs with overcommit) is refused."""
    nic = DeviceView("host-a", "pci", "0000:81:00.0", "nic", "8086", "10d3", "enabled",
                     "ready", None, False, True, 12, None, None, 1, ("0000:80:00.0",))
    roomy_node_0 = (NumaNode(0, 32, 262144), NumaNode(1, 8, 65536))
    snapshot = Snapshot.build([server("host-a", numa_nodes=roomy_node_0)], [nic], [])
    asked = PlacementRequest(name="pinned", vcpus=2, memory_mib=1024, numa="required",
                             gpus=(GpuAsk(id="0000:81:00.0"),))
    for answer in (place(asked, snapshot), choose(asked, snapshot)):
        assert answer.chosen.numa_node == 1
        assert answer.chosen.devices == (("pci", "0000:81:00.0"),)
    too_big = PlacementRequest(name="big", vcpus=40, memory_mib=1024, numa="required",
                               gpus=(GpuAsk(id="0000:81:00.0"),))
    refused = place(too_big, snapshot)
    assert refused.chosen is None
    assert [reason.code for reason in refused.rejected["host-a"]] == ["numa_no_room"]


def test_gpus_asked_by_address_on_two_nodes_say_what_they_are_not_none():
    """The probe's `(None)`: GPUs asked by address are no ask by count, so the refusal
    described nothing; it names the GPUs picked and their nodes."""
    snapshot = Snapshot.build([server("host-a")], split_server("host-a"), [])
    request = PlacementRequest(name="pair", vcpus=2, memory_mib=1024,
                               gpus=(GpuAsk(id="0000:12:00.0"), GpuAsk(id="0000:22:00.0")),
                               locality="same-numa", locality_mode="required")
    placement = place(request, snapshot)
    assert placement.chosen is None
    [reason] = placement.rejected["host-a"]
    assert reason.code == "locality_numa" and "None" not in reason, reason
    assert "NUMA node 0: 1, NUMA node 1: 1" in reason, reason
