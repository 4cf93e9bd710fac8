"""A stopped VM that holds nothing moves to the host of the USB device it asks for.

Two real agents on loopback (libvirt's in-memory test driver each): host-a has USB stick
4C530001, host-b has 4C530002. What an operator checks: the VM record's host, the device
listing, each agent's own list of domains, and the room used on each host.
"""

import pytest
import requests

from controller.db.models import Vm
from tests.conftest import TOKEN as AGENT_TOKEN
from tests.test_controller_support import (ADMIN, NVIDIA_A10, LoopbackAgent, controller_app,
                                           controller_config, database_url, gpu_host, register,
                                           two_host_world)

__all__ = ["database_url"]   # the fixture, parametrised over SQLite and PostgreSQL
STICK_A, STICK_B = "0781:5567:4C530001", "0781:5567:4C530002"
A10 = {"vendor_id": "10de", "device_id": "2236"}


@pytest.fixture
def world(tmp_path):
    with two_host_world(tmp_path) as (app, client, agents):
        yield client, agents
        for name in [vm["name"] for vm in client.get("/v1/vms", headers=ADMIN)
                     .get_json()["vms"]]:
            client.delete(f"/v1/vms/{name}", headers=ADMIN)


@pytest.fixture
def any_db_world(tmp_path, database_url):
    """The same two hosts, the controller on SQLite and on a real PostgreSQL (row locks)."""
    agents = {"host-a": LoopbackAgent(tmp_path, "host-a", gpu_host()),
              "host-b": LoopbackAgent(tmp_path, "host-b", gpu_host(NVIDIA_A10, "4C530002"))}
    app = controller_app(controller_config(tmp_path, database_url))
    client = app.test_client()
    try:
        for agent in agents.values():
            register(client, agent)
        yield client, agents
    finally:
        for agent in agents.values():
            agent.stop()
        app.extensions["hostplane_controller"].close()


def create_on_b(client, name, **body):
    answer = client.post("/v1/vms", headers=ADMIN, json={
        "name": name, "vcpus": 2, "memory_mib": 256, "start": False, "host": "host-b", **body})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def add_usb(client, name, usb_id):
    return client.post(f"/v1/vms/{name}/devices", headers=ADMIN,
                       json={"type": "usb", "id": usb_id})


def domains(agent):
    """{name: [device ids]} as the agent itself lists its libvirt domains."""
    answer = requests.get(agent.url + "/v1/vms", timeout=10,
                          headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
    answer.raise_for_status()
    return {vm["name"]: [d["id"] for d in vm["devices"]] for vm in answer.json()["vms"]}


def used_vcpus(client, host_id):
    return client.get(f"/v1/hosts/{host_id}", headers=ADMIN).get_json()["used_vcpus"]


def device(client, host_id, device_id):
    return client.get(f"/v1/devices/{host_id}/{device_id}", headers=ADMIN).get_json()


def assert_left_as_it_was(client, agents, name):
    vm = client.get(f"/v1/vms/{name}", headers=ADMIN).get_json()
    assert (vm["host"], vm["state"]) == ("host-b", "stopped")
    assert name in domains(agents["host-b"]) and name not in domains(agents["host-a"])
    assert (used_vcpus(client, "host-a"), used_vcpus(client, "host-b")) == (0, 2)
    stick = device(client, "host-a", STICK_A)
    assert (stick["status"], stick["vm"]) == ("ready", None)


def test_stopped_vm_moves_to_the_host_of_its_usb_and_takes_it(any_db_world):
    client, agents = any_db_world
    create_on_b(client, "mv-stick")
    assert "mv-stick" in domains(agents["host-b"])
    answer = add_usb(client, "mv-stick", STICK_A)
    assert answer.status_code == 200, answer.get_json()
    vm = answer.get_json()
    assert vm["host"] == "host-a" and vm["state"] == "stopped"
    assert [(d["host_id"], d["id"]) for d in vm["devices"]] == [("host-a", STICK_A)]
    assert client.get("/v1/vms/mv-stick", headers=ADMIN).get_json()["host"] == "host-a"
    assert domains(agents["host-a"]) == {"mv-stick": [STICK_A]}
    assert "mv-stick" not in domains(agents["host-b"])
    assert (used_vcpus(client, "host-a"), used_vcpus(client, "host-b")) == (2, 0)
    assert device(client, "host-a", STICK_A)["vm"] == "mv-stick"
    # it runs where it now is, and its USB went with it
    assert client.post("/v1/vms/mv-stick/start", headers=ADMIN).status_code == 200
    assert client.get("/v1/vms/mv-stick", headers=ADMIN).get_json()["state"] == "running"


@pytest.mark.parametrize("holding, reason", [
    ({"usb": [{"id": STICK_B}]}, "mv-held holds devices on host-b"),
    ({"gpus": [A10]}, "mv-held holds devices on host-b"),
    ({"start": True}, "mv-held is running on host-b"),
])
def test_running_vm_or_one_holding_devices_is_refused_and_nothing_changes(world, holding,
                                                                           reason):
    client, agents = world
    create_on_b(client, "mv-held", **holding)
    held_before = sorted(d["id"] for d in client.get("/v1/vms/mv-held", headers=ADMIN)
                         .get_json()["devices"])
    answer = add_usb(client, "mv-held", STICK_A)
    assert answer.status_code == 409, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "device_not_attachable"
    assert reason in error["details"]["hosts"]["host-a"]
    vm = client.get("/v1/vms/mv-held", headers=ADMIN).get_json()
    assert vm["host"] == "host-b"
    assert sorted(d["id"] for d in vm["devices"]) == held_before
    assert "mv-held" not in domains(agents["host-a"])
    assert device(client, "host-a", STICK_A)["vm"] is None


def test_move_stays_within_the_cluster(world):
    client, agents = world
    create_on_b(client, "mv-far")
    assert client.patch("/v1/hosts/host-a", headers=ADMIN,
                        json={"cluster": "elsewhere"}).status_code == 200
    answer = add_usb(client, "mv-far", STICK_A)
    assert answer.status_code == 409
    assert ("mv-far may move only within cluster default"
            in answer.get_json()["error"]["details"]["hosts"]["host-a"])
    assert_left_as_it_was(client, agents, "mv-far")


def test_target_agent_down_is_503_and_the_vm_stays_with_its_claim_released(any_db_world):
    client, agents = any_db_world
    create_on_b(client, "mv-lost")
    port = agents["host-a"].served.port
    agents["host-a"].stop()
    try:
        answer = add_usb(client, "mv-lost", STICK_A)
        assert answer.status_code == 503, answer.get_json()
        assert answer.get_json()["error"]["code"] == "agent_unreachable"
    finally:
        agents["host-a"].start(port)
    assert_left_as_it_was(client, agents, "mv-lost")
    # and the move works once the agent is back
    assert add_usb(client, "mv-lost", STICK_A).get_json()["host"] == "host-a"


def test_vm_started_behind_the_controllers_back_is_not_moved(world):
    client, agents = world
    create_on_b(client, "mv-live")
    started = requests.post(agents["host-b"].url + "/v1/vms/mv-live/start", timeout=10,
                            headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
    assert started.status_code == 200
    answer = add_usb(client, "mv-live", STICK_A)
    assert answer.status_code == 409
    assert answer.get_json()["error"]["code"] == "vm_not_stopped"
    assert "mv-live" not in domains(agents["host-a"])
    assert (used_vcpus(client, "host-a"), used_vcpus(client, "host-b")) == (0, 2)
    assert device(client, "host-a", STICK_A)["vm"] is None
    assert client.get("/v1/vms/mv-live", headers=ADMIN).get_json()["host"] == "host-b"


def test_a_vm_in_the_middle_of_a_move_is_busy_for_everything_else(world):
    client, agents = world
    create_on_b(client, "mv-busy")
    app = client.application
    with app.extensions["hostplane_controller"].db.write() as session:   # as a move holds it
        row = session.get(Vm, "mv-busy")
        row.moving_to, row.state = "host-a", "moving"
    for method, path in (("post", "/v1/vms/mv-busy/start"), ("post", "/v1/vms/mv-busy/stop"),
                         ("delete", "/v1/vms/mv-busy")):
        answer = getattr(client, method)(path, headers=ADMIN)
        assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "vm_busy"
    assert add_usb(client, "mv-busy", STICK_A).get_json()["error"]["code"] == "vm_busy"
    assert "mv-busy" in domains(agents["host-b"])
    with app.extensions["hostplane_controller"].db.write() as session:
        row = session.get(Vm, "mv-busy")
        row.moving_to, row.state = None, "stopped"
