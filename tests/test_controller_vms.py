"""VM lifecycle through the controller and real agents (libvirt `test:///default`).

The claim outlives stop/start, goes back on delete or when the agent refuses, and a
running VM only ever takes devices from its own host.
"""

import pytest

from tests.test_controller_support import ADMIN, TENANT, two_host_world

A10 = {"vendor_id": "10de", "device_id": "2236"}
STICK_A = "0781:5567:4C530001"


@pytest.fixture
def world(tmp_path):
    with two_host_world(tmp_path) as (_, client, _):
        yield client
        for name in [vm["name"] for vm in client.get("/v1/vms", headers=ADMIN)
                     .get_json()["vms"]]:
            client.delete(f"/v1/vms/{name}", headers=ADMIN)


def create(client, name, headers=ADMIN, **body):
    return client.post("/v1/vms", headers=headers, json={
        "name": name, "vcpus": 2, "memory_mib": 256, "start": False, **body})


def held_by(client, host_id):
    devices = client.get(f"/v1/devices?host={host_id}", headers=ADMIN).get_json()["devices"]
    return {d["id"]: d["vm"] for d in devices if d["vm"]}


def test_create_claims_gpu_with_audio_and_the_reservation_survives_stop_and_start(world):
    client = world
    answer = create(client, "vm-gpu", gpus=[A10])
    assert answer.status_code == 201, answer.get_json()
    vm = answer.get_json()
    assert vm["host"] == "host-b"
    held = held_by(client, "host-b")
    assert sorted(held.values()) == ["vm-gpu", "vm-gpu"]
    assert {address[-1] for address in held} == {"0", "1"}
    assert client.get("/v1/hosts/host-b", headers=ADMIN).get_json()["used_vcpus"] == 2
    assert client.post("/v1/vms/vm-gpu/start", headers=ADMIN).status_code == 200
    assert client.post("/v1/vms/vm-gpu/stop", headers=ADMIN, json={"force": True}
                       ).status_code == 200
    assert held_by(client, "host-b") == held
    two = client.post("/v1/schedule/explain", headers=ADMIN, json={
        "name": "vm-two", "vcpus": 1, "memory_mib": 64, "gpus": [{**A10, "count": 2}]})
    assert any("1 of 2" in r for r in two.get_json()["rejected"]["host-b"])


def test_detach_from_a_stopped_vm_gives_the_gpu_and_its_audio_back(world):
    client = world
    assert create(client, "vm-det", gpus=[A10]).status_code == 201
    held = sorted(held_by(client, "host-b"))
    answer = client.delete(f"/v1/vms/vm-det/devices/host-b/{held[0]}", headers=ADMIN)
    assert answer.status_code == 200, answer.get_json()
    assert held_by(client, "host-b") == {}
    assert client.get("/v1/vms/vm-det", headers=ADMIN).get_json()["devices"] == []


def test_delete_gives_devices_and_room_back(world):
    client = world
    assert create(client, "vm-gone", gpus=[A10]).status_code == 201
    assert client.delete("/v1/vms/vm-gone", headers=ADMIN).status_code == 204
    assert held_by(client, "host-b") == {}
    assert client.get("/v1/hosts/host-b", headers=ADMIN).get_json()["used_vcpus"] == 0
    assert client.get("/v1/vms/vm-gone", headers=ADMIN).status_code == 404


def test_vm_name_taken_is_409_and_claims_nothing_more(world):
    client = world
    assert create(client, "vm-twice", gpus=[A10]).status_code == 201
    again = create(client, "vm-twice", gpus=[A10])
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "name_taken"
    assert len(held_by(client, "host-b")) == 2


def test_running_vm_takes_usb_only_from_its_own_host(world):
    client = world
    assert create(client, "vm-b", gpus=[A10], start=True).status_code == 201
    answer = client.post("/v1/vms/vm-b/devices", headers=ADMIN, json={"type": "usb",
                                                                       "id": STICK_A})
    assert answer.status_code == 409
    assert answer.get_json()["error"]["code"] == "device_not_attachable"
    reasons = answer.get_json()["error"]["details"]["hosts"]
    assert any("running on host-b" in r for r in reasons["host-a"])
    assert held_by(client, "host-a") == {}


def test_tenant_sees_and_deletes_only_its_own_vms(world):
    client = world
    for address in ("0000:3b:00.0", "0000:3b:00.1"):
        client.patch(f"/v1/devices/host-b/{address}", headers=ADMIN, json={"shared": True})
    assert create(client, "admin-vm").status_code == 201
    answer = create(client, "acme-vm", TENANT, gpus=[A10])
    assert answer.status_code == 201, answer.get_json()
    assert [vm["name"] for vm in client.get("/v1/vms", headers=TENANT).get_json()["vms"]] == [
        "acme-vm"]
    assert client.get("/v1/vms/admin-vm", headers=TENANT).status_code == 404
    assert client.delete("/v1/vms/admin-vm", headers=TENANT).status_code == 404
    # a recalled share leaves the tenant's GPU attached
    client.patch("/v1/devices/host-b/0000:3b:00.0", headers=ADMIN, json={"shared": False})
    assert held_by(client, "host-b")["0000:3b:00.0"] == "acme-vm"


def test_anti_affinity_group_spreads_vms_over_hosts(world):
    client = world
    first = create(client, "db-1", anti_affinity_group="db").get_json()["host"]
    second = create(client, "db-2", anti_affinity_group="db")
    assert second.status_code == 201 and second.get_json()["host"] != first
    third = create(client, "db-3", anti_affinity_group="db")
    assert third.status_code == 422
    assert any("anti-affinity group db" in r
               for r in third.get_json()["error"]["details"]["hosts"][first])
