"""NUMA: the host's nodes as the agent reports them, and VMs pinned to one node.

The topology report reads a generated sysfs tree with two nodes (this machine has one).
Pinning runs on the real qemu:///system: the generated tree's node 0 is this machine's
own node 0 (its CPUs and memory as /sys shows them), so libvirt and the kernel accept
the pin, and the test reads it on the running QEMU process.
"""

import pytest

from agent.inventory.sysfs import SysfsTree
from agent.virt import domxml
from hostplane.core.numa import parse_cpulist, pin_refusal, reported_nodes
from tests.conftest import AUTH
from tests.support import wait_for
from tests.test_virt_support import (GPU, agent_client, create_vm, inactive_xml,  # noqa: F401
                                     lv, prefix)

TWO_NODES = [(0, "0-15,32-47", 65536), (1, "16-31,48-63", 65536)]


def this_machines_node0():
    live = {node["id"]: node for node in SysfsTree("/sys").numa_nodes()}
    if 0 not in live:
        pytest.skip("this kernel shows no NUMA node 0 under /sys/devices/system/node")
    return live[0]


def host_with_nodes(nodes):
    from tests.hosts import small_gpu_host
    host = small_gpu_host()
    host.numa_nodes = list(nodes)
    return host


def test_cpulists_read_as_the_kernel_writes_them():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("") == []
    for bad in ("0-", "a", "3-1", "0,,1", "0-99999"):
        with pytest.raises(ValueError):
            parse_cpulist(bad)


def test_a_pin_is_refused_with_the_reason_an_operator_can_act_on():
    nodes = [{"id": 0, "cpus": "0-1", "memory_mib": 1024},
             {"id": 1, "cpus": "", "memory_mib": 1024}]
    assert pin_refusal(nodes, 0, 512) is None
    assert pin_refusal(nodes, 2, 512)[0] == "numa_node_not_found"
    assert pin_refusal(nodes, 1, 512)[0] == "numa_node_without_cpus"
    assert pin_refusal(nodes, 0, 2048) == (
        "numa_node_too_small", "NUMA node 0 has 1024 MiB; the VM asks 2048 MiB")


def test_the_controller_keeps_only_well_formed_nodes_an_agent_reports():
    good = {"id": 1, "cpus": "16-31", "memory_mib": 4096}
    assert reported_nodes([good, {"id": 0, "cpus": "0-15", "memory_mib": 4096, "x": 1}]) == [
        {"id": 0, "cpus": "0-15", "memory_mib": 4096}, good]
    assert reported_nodes([{"id": "0", "cpus": "0", "memory_mib": 1}, {"id": 2, "cpus": "x",
                           "memory_mib": 1}, {"id": True, "cpus": "0", "memory_mib": 1},
                           "node", {"id": 3}, good]) == [good]
    assert reported_nodes(None) == [] and reported_nodes({"id": 0}) == []


def test_host_reports_both_numa_nodes_of_a_two_socket_tree(tmp_path, lv):  # noqa: F811
    with agent_client(tmp_path, host=host_with_nodes(TWO_NODES)) as (client, _agent):
        facts = client.get("/v1/host", headers=AUTH).get_json()
    assert facts["numa_nodes"] == [{"id": 0, "cpus": "0-15,32-47", "memory_mib": 65536},
                                   {"id": 1, "cpus": "16-31,48-63", "memory_mib": 65536}]


def test_a_tree_without_nodes_reports_none(tmp_path, lv):  # noqa: F811
    with agent_client(tmp_path) as (client, _agent):
        assert client.get("/v1/host", headers=AUTH).get_json()["numa_nodes"] == []


def test_vm_pinned_to_node_0_runs_on_its_cpus_and_memory(tmp_path, lv, prefix):  # noqa: F811
    node = this_machines_node0()
    # The tree's node 0 holds only the last of the real node's CPUs, so a pin shows as
    # a narrower affinity than QEMU would get unpinned.
    cpus = str(parse_cpulist(node["cpus"])[-1])
    host = host_with_nodes([(0, cpus, node["memory_mib"])])
    name = f"{prefix}-pinned"
    with agent_client(tmp_path, host=host) as (client, _agent):
        view = create_vm(client, name, numa_node=0, start=True)
        assert (view["numa_node"], view["cpuset"], view["state"]) == (0, cpus, "running")
        assert client.get(f"/v1/vms/{name}", headers=AUTH).get_json()["numa_node"] == 0

    root = domxml.parse(inactive_xml(lv, name))   # what `virsh dumpxml --inactive` shows
    assert root.find("vcpu").get("cpuset") == cpus
    memory = root.find("numatune/memory")
    assert (memory.get("mode"), memory.get("nodeset")) == ("strict", "0")
    # The kernel's view of the running QEMU: its process may run on the node's CPUs only.
    with open(f"/run/libvirt/qemu/{name}.pid", encoding="ascii") as handle:
        pid = handle.read().strip()
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        allowed = next(line.split()[1] for line in status if line.startswith("Cpus_allowed_list"))
    assert parse_cpulist(allowed) == [int(cpus)]


def test_an_unpinned_vm_reports_no_node(tmp_path, lv, prefix):  # noqa: F811
    with agent_client(tmp_path) as (client, _agent):
        view = create_vm(client, f"{prefix}-free")
    assert (view["numa_node"], view["cpuset"]) == (None, None)


@pytest.mark.parametrize("body, status, code", [
    ({"numa_node": 2}, 409, "numa_node_not_found"),
    ({"numa_node": 1, "memory_mib": 131072}, 409, "numa_node_too_small"),
    ({"numa_node": -1}, 400, "invalid_request"),
    ({"numa_node": "one"}, 400, "invalid_request"),
])
def test_a_bad_numa_node_is_refused_and_defines_nothing(tmp_path, lv, prefix,  # noqa: F811
                                                        body, status, code):
    name = f"{prefix}-bad"
    with agent_client(tmp_path, host=host_with_nodes(TWO_NODES)) as (client, _agent):
        answer = client.post("/v1/vms", headers=AUTH, json={
            "name": name, "vcpus": 1, "memory_mib": 64, "accel": "tcg",
            "devices": [{"type": "pci", "id": GPU}], **body})
        assert answer.status_code == status, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == code, error
        if status == 409:
            assert [n["id"] for n in error["details"]["numa_nodes"]] == [0, 1]
        assert client.get(f"/v1/vms/{name}", headers=AUTH).status_code == 404
    assert name not in [dom.name() for dom in lv.listAllDomains()]
