"""Pool asks under PCIe locality and NUMA policy, through the controller and real agents.

host-a: three NVMe drives 144d:a808 on NUMA node 0, one right under root port 0000:04:00.0,
two below the PCIe switch 0000:11:00.0 (its downstream ports 0000:12:00.0 and 0000:12:01.0),
with two NUMA nodes reported; host-b: two such drives, each under its own root port, one
per node. Every drive is its own IOMMU group, so the claim order (smallest group, then
address) alone would take 0000:05:00.0 and 0000:13:00.0, under two different switches.
"""

import pytest

from tests.hosts import INTEL, SAMSUNG
from tests.synthetic import Host, PciFunction as F
from tests.test_controller_support import (ADMIN, LoopbackAgent, controller_app,
                                           controller_config, register)

NVME = {"vendor_id": SAMSUNG, "device_id": "a808"}
SWITCH = "0000:11:00.0"


def drive(address, group, node, parent):
    return F(address, SAMSUNG, "a808", "010802", "nvme", group, node, parent=parent,
             subsystem=(SAMSUNG, "a801"))


def port(address, group, node, parent=None):
    return F(address, INTEL, "347a", "060400", "pcieport", group, node, parent=parent)


def switch_host():
    host = Host(numa_nodes=[(0, "0-3", 16384), (1, "4-7", 16384)])
    host.pci += [F("0000:00:00.0", INTEL, "09a2", "060000", None, 0, 0),
                 port("0000:04:00.0", 1, 0), drive("0000:05:00.0", 2, 0, "0000:04:00.0"),
                 port("0000:10:00.0", 3, 0), port(SWITCH, 4, 0, "0000:10:00.0"),
                 port("0000:12:00.0", 5, 0, SWITCH), port("0000:12:01.0", 6, 0, SWITCH),
                 drive("0000:13:00.0", 7, 0, "0000:12:00.0"),
                 drive("0000:14:00.0", 8, 0, "0000:12:01.0")]
    return host


def split_host():
    host = Host()
    host.pci += [F("0000:00:00.0", INTEL, "09a2", "060000", None, 0, 0),
                 port("0000:04:00.0", 1, 0), drive("0000:05:00.0", 2, 0, "0000:04:00.0"),
                 port("0000:84:00.0", 3, 1), drive("0000:85:00.0", 4, 1, "0000:84:00.0")]
    return host


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pool-locality")
    agents = [LoopbackAgent(tmp_path, "host-a", switch_host()),
              LoopbackAgent(tmp_path, "host-b", split_host())]
    app = controller_app(controller_config(tmp_path))
    client = app.test_client()
    try:
        for agent in agents:
            register(client, agent)
        assert client.post("/v1/device-pools", headers=ADMIN,
                           json={"name": "nvme", **NVME}).status_code == 201
        yield client
    finally:
        for agent in agents:
            agent.stop()
        app.extensions["hostplane_controller"].close()


def explain(client, **body):
    answer = client.post("/v1/schedule/explain", headers=ADMIN, json={
        "name": "vm-1", "vcpus": 2, "memory_mib": 1024,
        "devices": [{"pool": "nvme", "count": 2}], **body})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def test_two_pool_devices_same_switch_are_the_two_under_one_switch(client):
    answer = client.post("/v1/vms", headers=ADMIN, json={
        "name": "scratch", "vcpus": 2, "memory_mib": 1024, "start": False,
        "devices": [{"pool": "nvme", "count": 2}], "locality": "same-switch"})
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["host"] == "host-a"
    devices = client.get("/v1/devices?host=host-a", headers=ADMIN).get_json()["devices"]
    assert sorted(d["id"] for d in devices if d["vm"] == "scratch") == ["0000:13:00.0",
                                                                        "0000:14:00.0"]
    assert client.delete("/v1/vms/scratch", headers=ADMIN).status_code in (200, 202, 204)


def test_explain_says_per_host_what_each_pool_offers_and_required_locality_refuses(client):
    preferred = explain(client, locality="same-switch")
    found = {c["host"]: c["found"] for c in preferred["candidates"]}
    assert preferred["chosen"] == "host-a"
    assert found == {
        "host-a": f"3 devices of pool nvme free: 1 under no switch, 2 under switch {SWITCH}; "
                  "NUMA node 0: 3",
        "host-b": "2 devices of pool nvme free: 2 under no switch; "
                  "NUMA node 0: 1, NUMA node 1: 1"}
    assert [d["id"] for d in preferred["candidates"][0]["devices"]] == ["0000:13:00.0",
                                                                       "0000:14:00.0"]
    required = explain(client, locality="same-switch", locality_mode="required")
    assert [c["host"] for c in required["candidates"]] == ["host-a"]
    assert required["rejected"]["host-b"] == [f"no 2 free devices under one switch "
                                              f"({found['host-b']})"]


def test_numa_required_pool_ask_pins_to_the_drives_node(client):
    result = explain(client, numa="required")
    assert result["chosen"] == "host-a"
    assert result["candidates"][0]["numa_node"] == 0
    assert result["rejected"]["host-b"] == ["host NUMA nodes not reported"]
