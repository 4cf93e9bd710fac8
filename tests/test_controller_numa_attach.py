"""A VM placed with `numa: required` keeps its node when devices are added later.

Found by probing the API: a VM pinned to node 0 took, on attach, a drive of node 1 without
a word, and its record showed neither its node nor its policy. Real controller and a real
agent on loopback; host-a reports two NUMA nodes and has two NVMe drives on each, node 1's
at the lower addresses (the plain claim order takes them first).
"""

import pytest

from tests.hosts import INTEL, SAMSUNG
from tests.synthetic import Host, PciFunction as F
from tests.test_controller_support import ADMIN, loopback_world

NODE_1 = ("0000:11:00.0", "0000:21:00.0")   # each below its own root port, bus - 1
NODE_0 = ("0000:91:00.0", "0000:a1:00.0")


def two_node_host():
    host = Host(numa_nodes=[(0, "0-3", 16384), (1, "4-7", 16384)])
    host.pci.append(F("0000:00:00.0", INTEL, "09a2", "060000", None, 0, 0))
    for group, (address, node) in enumerate(
            [(a, 1) for a in NODE_1] + [(a, 0) for a in NODE_0], start=1):
        port = f"0000:{int(address[5:7], 16) - 1:02x}:00.0"   # 0000:10:00.0 for 0000:11:00.0
        host.pci.append(F(port, INTEL, "347a", "060400", "pcieport", 10 + group, node))
        host.pci.append(F(address, SAMSUNG, "a808", "010802", "nvme", group, node,
                          parent=port, subsystem=(SAMSUNG, "a801")))
    return host


@pytest.fixture()
def client(tmp_path):
    with loopback_world(tmp_path, {"host-a": two_node_host()}) as (_, client, _agents):
        assert client.post("/v1/device-pools", headers=ADMIN, json={
            "name": "nvme", "vendor_id": SAMSUNG, "device_id": "a808"}).status_code == 201
        yield client


def held(vm):
    return sorted(device["id"] for device in vm["devices"])


def attach(client, name):
    return client.post(f"/v1/vms/{name}/devices", headers=ADMIN,
                       json={"devices": [{"pool": "nvme"}]})


def test_devices_added_to_a_pinned_vm_come_from_its_node(client):
    made = client.post("/v1/vms", headers=ADMIN, json={
        "name": "pinned", "vcpus": 2, "memory_mib": 1024, "start": False, "numa": "required",
        "devices": [{"pool": "nvme"}]})
    assert made.status_code == 201, made.get_json()
    vm = made.get_json()
    assert (vm["numa"], vm["numa_node"]) == ("required", 0), vm
    assert len(held(vm)) == 1 and held(vm)[0] in NODE_0
    added = attach(client, "pinned")
    assert added.status_code == 200, added.get_json()
    assert held(added.get_json()) == list(NODE_0)
    refused = attach(client, "pinned")   # only node 1's drives are free
    assert refused.status_code == 409, refused.get_json()
    error = refused.get_json()["error"]
    codes = [r["code"] for r in error["details"]["reasons"]["host-a"]]
    assert codes == ["numa_other_node"], error
    assert "pinned to NUMA node 0" in error["message"], error
    assert held(client.get("/v1/vms/pinned", headers=ADMIN).get_json()) == list(NODE_0)


def test_a_vm_with_no_numa_policy_takes_devices_from_any_node(client):
    made = client.post("/v1/vms", headers=ADMIN, json={
        "name": "loose", "vcpus": 2, "memory_mib": 1024, "start": False,
        "devices": [{"pool": "nvme"}]})
    assert made.status_code == 201, made.get_json()
    assert (made.get_json()["numa"], made.get_json()["numa_node"]) == ("none", None)
    assert held(made.get_json())[0] in NODE_1   # the claim order's first
    for _ in range(3):
        assert attach(client, "loose").status_code == 200
    assert held(client.get("/v1/vms/loose", headers=ADMIN).get_json()) == sorted(NODE_0 + NODE_1)
