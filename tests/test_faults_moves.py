"""The controller SIGKILLed in the middle of moving a stopped VM to its USB device.

Two real gunicorn agents (libvirt `test:///default` each): hpf-src holds the stopped VM,
hpf-dst has the USB stick it asks for. A real gunicorn controller (poller on) starts the
move and is killed while an agent, frozen with SIGSTOP, holds one of its steps:

- `target-thawed`: the target is frozen in the define; after the restart it is thawed
  and defines the VM for a dead controller → the domain is on both hosts, so the move is
  rolled back (the target's copy undefined);
- `target-killed`: the same, but the target agent is killed and a fresh one (no
  domains) takes its address → rolled back;
- `source-frozen-at-undefine`: the define went through, the source is frozen in the
  undefine; thawed after the restart, it undefines → the move is finished.

What an operator checks afterwards: nothing stays `moving`; the VM is on exactly one
agent, the one its record names; the stick is held by it only if it moved; the room on
the target is free again otherwise. On SQLite and PostgreSQL.
"""

import threading
import time

import pytest

from controller.db import upgrade
from tests.conftest import TOKEN as AGENT_TOKEN
from tests.test_controller_support import database_url, gpu_host
from tests.support import free_port, wait_until
from tests.test_faults_controller_support import (AgentProcess, Api, ControllerProcess,
                                                  agent_domains, crash_and_restart)

__all__ = ["database_url"]   # the fixture, parametrised over SQLite and PostgreSQL
STICK = "0781:5567:4C530001"   # on hpf-dst only (hpf-src has 4C530002)
VM = "hpf-mover"
EXPECTED = {"target-thawed": "hpf-src", "target-killed": "hpf-src",
            "source-frozen-at-undefine": "hpf-dst"}


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_controller_killed_mid_move_ends_moved_or_back_and_never_stays_moving(
        tmp_path, database_url, fault):
    upgrade(database_url)
    for name in ("src", "dst"):
        (tmp_path / name).mkdir()
    agents = {"hpf-src": AgentProcess(tmp_path / "src", "hpf-src", f"127.0.0.1:{free_port()}",
                                      host=gpu_host(usb_serial="4C530002")),
              "hpf-dst": AgentProcess(tmp_path / "dst", "hpf-dst", f"127.0.0.1:{free_port()}")}
    source, target = agents["hpf-src"], agents["hpf-dst"]
    # agent calls wait 6 x 2 s: room to kill the controller while one is held
    controller = ControllerProcess(tmp_path, database_url, poll_timeout_s=2)
    api = Api(controller)
    try:
        for agent in agents.values():
            assert api("POST", "/v1/hosts", {"url": agent.url, "token": AGENT_TOKEN})[0] == 201
        status, body = api("POST", "/v1/vms", {"name": VM, "vcpus": 2, "memory_mib": 128,
                                               "start": False, "host": "hpf-src"})
        assert status == 201 and body["host"] == "hpf-src", body
        assert room_on_target_for_the_vm(api), "the target has no room to begin with"

        target.freeze()
        move = threading.Thread(target=api.quietly, args=(
            "POST", f"/v1/vms/{VM}/devices", {"type": "usb", "id": STICK}))
        move.start()
        wait_until("the move's claim", lambda: api("GET", f"/v1/vms/{VM}")[1]["state"]
                   == "moving")
        _, devices = api.claims()
        assert devices[("hpf-dst", STICK)] == ("attached", VM)   # reserved on the target
        assert not room_on_target_for_the_vm(api)
        time.sleep(1)   # the source's check is answered; the define waits on the target
        if fault == "source-frozen-at-undefine":
            source.freeze()
            target.thaw()
            wait_until("the define on the target", lambda: VM in agent_domains(target))
            time.sleep(1)   # the undefine is sent to the frozen source
        started = crash_and_restart(
            controller, move, lost=[target] if fault == "target-killed" else [],
            thawed={"target-thawed": [target], "target-killed": [],
                    "source-frozen-at-undefine": [source]}[fault])

        vm = wait_until("the move to be settled", lambda: (
            lambda vm: vm if vm["state"] != "moving" else None)(
                api("GET", f"/v1/vms/{VM}")[1]), timeout=240)
        print(f"\nfault: controller SIGKILL mid-move, {database_url.split(':')[0]}, {fault}:"
              f" on {vm['host']} {time.monotonic() - started:.1f} s after restart")
        vms, devices = api.claims()
        assert all(state != "moving" for _, state, _ in vms.values()), vms
        on = {host_id: VM in agent_domains(agent) for host_id, agent in agents.items()}
        assert on == {host_id: host_id == vm["host"] for host_id in agents}, on
        assert vm["host"] == EXPECTED[fault] and vm["state"] == "stopped", vm
        stick = devices[("hpf-dst", STICK)]
        if vm["host"] == "hpf-dst":
            assert [d["id"] for d in vm["devices"]] == [STICK]
            assert stick == ("attached", VM)
            assert agent_domains(target)[VM][1] == [STICK]   # in the domain's definition
            assert api.host("hpf-src")["used_vcpus"] == 0
        else:
            assert vm["devices"] == [] and stick == ("ready", None)
            assert room_on_target_for_the_vm(api)   # the reservation went with the rollback
        # and the VM can be used where its record says it is
        assert api("POST", f"/v1/vms/{VM}/start")[0] == 200
        assert agent_domains(agents[vm["host"]])[VM][0] == "running"
    finally:
        controller.stop()
        for agent in agents.values():
            agent.stop()


def room_on_target_for_the_vm(api):
    """Whether hpf-dst could take a VM using all of its memory but the mover's 128 MiB
    (memory is not overcommitted): False while the mover's room is held there."""
    memory = api.host("hpf-dst")["memory_mib"]
    status, body = api("POST", "/v1/schedule/explain", {
        "name": "hpf-probe", "vcpus": 1, "memory_mib": memory - 127, "host": "hpf-dst"})
    assert status == 200, body
    return body["chosen"] == "hpf-dst"
