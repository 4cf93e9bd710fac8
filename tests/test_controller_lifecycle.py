"""A device attached to a VM belongs to that VM alone, and the controller knows which —
through the orders of operations a hostile operator (or a slow network) produces.

Each test here failed on the controller before VM operations carried ids:
- a DELETE of a VM whose create was still with its agent was accepted, freed the GPU and
  dropped the row, and the create then defined the domain behind the controller's back;
- concurrent DELETEs of one name all answered 204;
- an agent that answered after the controller's timeout kept a GPU for a VM the
  controller did not list, and nothing in the API could free it;
- a domain made behind the controller's back showed its GPU attached to a VM name the
  API could not show;
- on PostgreSQL, two concurrent creates of one name answered 500.

Real parts: gunicorn controllers (SQLite and PostgreSQL) and gunicorn agents (libvirt
`test:///default`), agents frozen with SIGSTOP past the controller's timeout.
"""

import threading
import time
from collections import Counter

import pytest
import requests

from controller.db import upgrade
from tests.conftest import TOKEN as AGENT_TOKEN
from tests.test_controller_support import ADMIN
from tests.test_controller_support import database_url  # noqa: F401 - fixture
from tests.support import all_at_once, free_port, wait_until
from tests.test_faults_controller_support import AgentProcess, Api, ControllerProcess, agent_domains

GPU = {"vendor_id": "10de", "device_id": "1eb8"}
GPUS = ("0000:3b:00.0", "0000:af:00.0")


@pytest.fixture
def world(tmp_path, database_url):  # noqa: F811
    """(api, agent, controller): one two-GPU agent registered with a controller whose
    agent calls time out after 6 s and whose poller runs every second."""
    upgrade(database_url)
    agent = AgentProcess(tmp_path, "hpl-host", f"127.0.0.1:{free_port()}")
    controller = ControllerProcess(tmp_path, database_url, workers=2)
    api = Api(controller)
    try:   # libvirt's test driver starts with a domain "test" of its own: not ours
        requests.delete(agent.url + "/v1/vms/test", timeout=30,
                        headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
        assert api("POST", "/v1/hosts", {"url": agent.url, "token": AGENT_TOKEN})[0] == 201
        yield api, agent, controller
    finally:
        controller.stop()
        agent.stop()


def vm_body(name, **extra):
    return {"name": name, "vcpus": 1, "memory_mib": 64, "start": False, "gpus": [GPU],
            **extra}


def test_a_vm_being_created_cannot_be_deleted_until_its_agent_answers(world):
    api, agent, _ = world
    agent.freeze()
    answers = {}
    create = threading.Thread(target=lambda: answers.update(
        create=api("POST", "/v1/vms", vm_body("hpl-busy"))))
    create.start()
    wait_until("the claim", lambda: api("GET", "/v1/vms/hpl-busy")[1].get("state") == "creating")
    status, body = api("DELETE", "/v1/vms/hpl-busy")
    assert (status, body["error"]["code"]) == (409, "vm_busy"), body
    agent.thaw()
    create.join(timeout=60)
    assert answers["create"][0] == 201, answers
    assert_claims_match_domains(api, agent)
    assert api("DELETE", "/v1/vms/hpl-busy")[0] == 204
    assert_claims_match_domains(api, agent)
    assert not agent_domains(agent)


def test_only_one_of_many_concurrent_deletes_of_a_vm_wins(world):
    api, agent, _ = world
    assert api("POST", "/v1/vms", vm_body("hpl-once"))[0] == 201
    counts = Counter(at_once(8, lambda: api("DELETE", "/v1/vms/hpl-once")[0]))
    assert counts[204] == 1 and set(counts) <= {204, 404, 409}, counts
    assert_claims_match_domains(api, agent)


def test_an_agent_answering_after_the_timeout_keeps_the_claim_until_it_is_settled(world):
    api, agent, _ = world
    agent.freeze()
    status, body = api("POST", "/v1/vms", vm_body("hpl-late"))
    assert status == 503 and body["error"]["code"] == "agent_unreachable", body
    assert body["error"]["details"]["state"] == "creating"
    vms, devices = api.claims()
    assert vms["hpl-late"][1] == "creating" and len(vms["hpl-late"][2]) == 2   # GPU + audio
    assert all(devices[("hpl-host", d)] == ("attached", "hpl-late") for d in vms["hpl-late"][2])
    agent.thaw()   # the agent now carries out the create it had queued
    wait_until("the late create to be adopted",
               lambda: api("GET", "/v1/vms/hpl-late")[1].get("state") == "stopped", timeout=120)
    assert_claims_match_domains(api, agent)
    assert "hpl-late" in agent_domains(agent)
    assert api("DELETE", "/v1/vms/hpl-late")[0] == 204
    assert_claims_match_domains(api, agent)
    _, devices = api.claims()
    assert {devices[("hpl-host", d)] for d in GPUS} == {("ready", None)}


def test_a_delete_the_agent_never_answered_is_finished_by_the_controller(world):
    api, agent, _ = world
    assert api("POST", "/v1/vms", vm_body("hpl-gone"))[0] == 201
    agent.freeze()
    status, body = api("DELETE", "/v1/vms/hpl-gone")
    assert status == 503 and body["error"]["details"]["state"] == "deleting", body
    assert api("GET", "/v1/vms/hpl-gone")[1]["state"] == "deleting"   # its GPU still held
    assert api("POST", "/v1/vms", vm_body("hpl-other", gpus=[GPU, GPU]))[0] == 422
    agent.thaw()
    wait_until("the delete to be finished",
               lambda: api("GET", "/v1/vms/hpl-gone")[0] == 404, timeout=120)
    assert_claims_match_domains(api, agent)
    assert not agent_domains(agent)


def test_a_domain_made_behind_the_controllers_back_is_an_orphan_to_adopt_or_delete(world):
    api, agent, _ = world
    # hpl-virsh holds a whole GPU (with its audio function), hpl-stray only a GPU function
    for name, functions in (("hpl-virsh", (GPUS[0], GPUS[0][:-1] + "1")),
                            ("hpl-stray", (GPUS[1],))):
        made = requests.post(agent.url + "/v1/vms", timeout=30,
                             headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
                             json={"name": name, "vcpus": 1, "memory_mib": 64,
                                   "devices": [{"type": "pci", "id": f} for f in functions]})
        assert made.status_code == 201, made.text
    wait_until("the controller to see both domains' GPUs held", lambda: {
        api("GET", f"/v1/devices/hpl-host/{gpu}")[1]["status"] for gpu in GPUS} == {"attached"})
    for gpu, name in zip(GPUS, ("hpl-virsh", "hpl-stray")):
        device = api("GET", f"/v1/devices/hpl-host/{gpu}")[1]
        assert (device["vm"], device["orphan"]) == (None, name)   # never a VM it can't show
    listed = api("GET", "/v1/orphans")[1]
    assert sorted(o["name"] for o in listed["orphans"]) == ["hpl-stray", "hpl-virsh"]
    assert api("POST", "/v1/vms", vm_body("hpl-new"))[0] == 422   # neither GPU is offered

    status, body = api("POST", "/v1/orphans/hpl-host/hpl-stray/adopt", {})
    assert (status, body["error"]["code"]) == (409, "group_split"), body   # half a group
    status, adopted = api("POST", "/v1/orphans/hpl-host/hpl-virsh/adopt", {})
    assert status == 201 and adopted["state"] == "stopped", adopted
    assert [d["id"] for d in adopted["devices"]] == [GPUS[0], GPUS[0][:-1] + "1"]
    assert api("GET", f"/v1/devices/hpl-host/{GPUS[0]}")[1]["vm"] == "hpl-virsh"
    assert api("DELETE", "/v1/orphans/hpl-host/hpl-virsh")[1]["error"]["code"] == "not_an_orphan"
    assert api("DELETE", "/v1/orphans/hpl-host/hpl-stray")[0] == 204
    assert "hpl-stray" not in agent_domains(agent)
    wait_until("the stray's GPU to be ready",
               lambda: api("GET", f"/v1/devices/hpl-host/{GPUS[1]}")[1]["status"] == "ready")
    assert api("GET", "/v1/orphans")[1]["orphans"] == []
    assert api("DELETE", "/v1/vms/hpl-virsh")[0] == 204
    assert_claims_match_domains(api, agent)


def test_concurrent_creates_of_one_name_make_one_vm_and_never_a_500(world):
    api, agent, controller = world
    def create():
        answer = requests.post(controller.url + "/v1/vms", headers=ADMIN, timeout=60,
                               json=vm_body("hpl-same", gpus=[]))
        return answer.status_code, answer.json().get("error", {}).get("code")
    counts = Counter(at_once(12, create))
    assert counts[(201, None)] == 1 and counts[(409, "name_taken")] == 11, counts
    assert list(agent_domains(agent)) == ["hpl-same"]


def test_an_adopt_and_a_delete_racing_for_one_orphan_never_both_win(world):
    api, agent, _ = world
    for offset in (0, 0.002, 0.005, 0.01, 0.02, 0.0):
        made = requests.post(agent.url + "/v1/vms", timeout=30,
                             headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
                             json={"name": "hpl-contested", "vcpus": 1, "memory_mib": 64,
                                   "devices": [{"type": "pci", "id": GPUS[0]},
                                               {"type": "pci", "id": GPUS[0][:-1] + "1"}]})
        assert made.status_code == 201, made.text
        wait_until("the orphan's GPU held", lambda: api(
            "GET", f"/v1/devices/hpl-host/{GPUS[0]}")[1]["orphan"] == "hpl-contested")
        answers = {}
        adopt = threading.Thread(target=lambda: answers.update(
            adopt=api("POST", "/v1/orphans/hpl-host/hpl-contested/adopt", {})[0]))
        adopt.start()
        time.sleep(offset)
        answers["delete"] = api("DELETE", "/v1/orphans/hpl-host/hpl-contested")[0]
        adopt.join(timeout=60)
        assert not (answers["adopt"] == 201 and answers["delete"] == 204), answers
        assert answers["adopt"] == 201 or answers["delete"] == 204, answers
        assert_claims_match_domains(api, agent)
        if answers["adopt"] == 201:
            assert api("DELETE", "/v1/vms/hpl-contested")[0] == 204
        wait_until("the GPU free again", lambda: api(
            "GET", f"/v1/devices/hpl-host/{GPUS[0]}")[1]["status"] == "ready")


def test_a_host_deleted_while_a_vm_is_placed_on_it_leaves_no_vm_without_a_host(world):
    api, agent, _ = world
    for offset in (0, 0.002, 0.005, 0.01, 0.0, 0.003):
        answers = {}
        create = threading.Thread(target=lambda: answers.update(
            create=api("POST", "/v1/vms", vm_body("hpl-homeless"))[0]))
        create.start()
        time.sleep(offset)
        answers["host"] = api("DELETE", "/v1/hosts/hpl-host")[0]
        create.join(timeout=60)
        assert not (answers["create"] == 201 and answers["host"] == 204), answers
        vms = api("GET", "/v1/vms")[1]["vms"]
        assert all(vm["host"] is not None for vm in vms), vms
        if answers["host"] == 204:
            assert "hpl-homeless" not in agent_domains(agent)
            assert api("POST", "/v1/hosts", {"url": agent.url, "token": AGENT_TOKEN})[0] == 201
        else:
            assert api("DELETE", "/v1/vms/hpl-homeless")[0] == 204
        assert_claims_match_domains(api, agent)


# --- what every test above checks at its end --------------------------------------------
def assert_claims_match_domains(api, *agents):
    """Every domain is a VM the controller lists, on its host, holding exactly what the
    controller says it holds; no device is held twice; nothing is held by a VM name
    the controller does not list."""
    vms, devices = api.claims()
    for agent in agents:
        host_id = agent_host_id(agent)
        domains = agent_domains(agent)
        for name, (_state, held) in domains.items():
            assert name in vms, f"{name} on {host_id} is unknown to the controller"
            host, _, claimed = vms[name]
            assert host == host_id and sorted(claimed) == held, (name, vms[name], held)
        for name, (host, state, _) in vms.items():
            if host == host_id and state not in ("creating", "deleting"):
                assert name in domains, f"{name} listed on {host_id} with no domain there"
    holders = [vm for (status, vm) in devices.values() if status == "attached"]
    assert set(holders) <= set(vms), f"devices held by VMs nobody lists: {holders}"


def at_once(callers, call):
    """What `callers` threads answered, each making `call()` at the same moment."""
    return all_at_once(callers, lambda _index: call())


def agent_host_id(agent):
    return agent.get("/v1/health")[1]["host_id"]
