"""The agent as production runs it (gunicorn, 2 worker processes) against a real libvirtd.

Concurrent attaches of one device from many clients end with exactly one holder across
both workers (the flock host lock), and an agent SIGKILLed between claim and attach
comes back with no device in two VMs and the interrupted attach reported on /v1/host.
"""

import concurrent.futures
import threading

import pytest

from tests.test_virt_support import (GPU, GPU_AUDIO, STICK, GunicornAgent, holders_in_xml, lv,  # noqa: F401
                                     pci_source, prefix, toml_config)
from tests.support import wait_for

CLIENTS = 20


@pytest.fixture
def served(tmp_path, lv):  # noqa: F811
    agent = GunicornAgent(tmp_path, toml_config(tmp_path))
    yield agent
    agent.stop()


def define(agent, name, start=False):
    answer = agent.call("POST", "/v1/vms", json={"name": name, "vcpus": 1, "memory_mib": 64,
                                                 "accel": "tcg", "start": start})
    assert answer.status_code == 201, answer.text


def race(agent, attempts):
    """[(vm, status, code)] of `attempts` [(vm, kind, id)] fired at once."""
    barrier = threading.Barrier(len(attempts))

    def one(attempt):
        vm, kind, device_id = attempt
        barrier.wait()
        answer = agent.call("POST", f"/v1/vms/{vm}/devices", json={"type": kind, "id": device_id})
        code = answer.json()["error"]["code"] if answer.status_code != 200 else None
        return vm, answer.status_code, code

    with concurrent.futures.ThreadPoolExecutor(len(attempts)) as pool:
        return list(pool.map(one, attempts))


def test_twenty_concurrent_attaches_of_one_usb_device_one_wins(served, lv, prefix):  # noqa: F811
    names = [f"{prefix}-{i:02d}" for i in range(CLIENTS)]
    for name in names:
        define(served, name)
    results = race(served, [(name, "usb", STICK) for name in names])
    winners = [vm for vm, status, _ in results if status == 200]
    assert len(winners) == 1, results
    assert sorted(code for _, status, code in results if status != 200) == \
        ["device_busy"] * (CLIENTS - 1)
    assert holders_in_xml(lv, prefix, "<vendor id='0x0781'/>") == set(winners)
    # Whichever worker answers, its inventory names the winner within a moment: a
    # config-only attach raises no libvirt event, so the workers tell each other.
    assert wait_for(lambda: all(
        served.call("GET", f"/v1/devices/usb/{STICK}").json()["attached_to"] == winners[0]
        for _ in range(8)), timeout=2)


def test_twenty_concurrent_attaches_into_one_iommu_group_one_vm_wins(served, lv, prefix):  # noqa: F811
    names = [f"{prefix}-{i:02d}" for i in range(CLIENTS)]
    for name in names:
        define(served, name)
    attempts = [(name, "pci", GPU if i % 2 else GPU_AUDIO) for i, name in enumerate(names)]
    results = race(served, attempts)
    winners = {vm for vm, status, _ in results if status == 200}
    assert len(winners) == 1, results
    assert {code for _, status, code in results if status != 200} <= {"group_member_busy",
                                                                       "device_busy"}
    holders = holders_in_xml(lv, prefix, pci_source(GPU)) | \
        holders_in_xml(lv, prefix, pci_source(GPU_AUDIO))
    assert holders == winners


def killed_while_attaching(tmp_path, step, vm, device):
    """Run an agent that pauses at `step`, SIGKILL it there, start a fresh one."""
    agent = GunicornAgent(tmp_path, toml_config(tmp_path),
                          env={"HOSTPLANE_VIRT_TEST_PAUSE": f"{step}:120"}, workers=1)
    define(agent, vm)
    define(agent, vm + "-other")
    thread = threading.Thread(target=lambda: _quietly(agent.call, "POST", f"/v1/vms/{vm}/devices",
                                                      json={"type": "pci", "id": device,
                                                            "with_group": True}))
    thread.start()
    marker = tmp_path / "state" / f"paused-{step}"
    assert wait_for(marker.exists, timeout=30), f"agent never reached {step}"
    assert (tmp_path / "state" / "virt-journal.json").exists()
    agent.kill()
    thread.join(30)
    return GunicornAgent(tmp_path, toml_config(tmp_path))


def _quietly(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the agent is killed under this request on purpose
        pass


def test_sigkill_between_claim_and_attach_leaves_nothing_attached_and_reports_it(
        tmp_path, lv, prefix):  # noqa: F811
    vm = f"{prefix}-claim"
    agent = killed_while_attaching(tmp_path, "claimed", vm, GPU)
    try:
        interrupted = agent.call("GET", "/v1/host").json()["libvirt"]["interrupted"]
        assert len(interrupted) == 1 and interrupted[0]["vm"] == vm
        assert interrupted[0]["attached"] == []
        assert interrupted[0]["not_attached"] == [f"pci:{GPU}", f"pci:{GPU_AUDIO}"]
        assert not (tmp_path / "state" / "virt-journal.json").exists()
        assert holders_in_xml(lv, prefix, pci_source(GPU)) == set()
        assert agent.call("GET", f"/v1/devices/pci/{GPU}").json()["attached_to"] is None
        retry = agent.call("POST", f"/v1/vms/{vm}-other/devices", json={"type": "pci", "id": GPU})
        assert retry.status_code == 200
    finally:
        agent.stop()


def test_sigkill_between_group_members_reports_the_half_attached_group(tmp_path, lv, prefix):  # noqa: F811
    vm = f"{prefix}-half"
    agent = killed_while_attaching(tmp_path, "attached-one", vm, GPU)
    try:
        report = agent.call("GET", "/v1/host").json()["libvirt"]["interrupted"][-1]
        assert (report["vm"], report["attached"], report["not_attached"]) == \
            (vm, [f"pci:{GPU}"], [f"pci:{GPU_AUDIO}"])
        assert holders_in_xml(lv, prefix, pci_source(GPU)) == {vm}
        assert holders_in_xml(lv, prefix, pci_source(GPU_AUDIO)) == set()
        assert agent.call("GET", f"/v1/devices/pci/{GPU}").json()["attached_to"] == vm
        refused = agent.call("POST", f"/v1/vms/{vm}-other/devices",
                             json={"type": "pci", "id": GPU_AUDIO})
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "group_member_busy"
        finish = agent.call("POST", f"/v1/vms/{vm}/devices", json={"type": "pci", "id": GPU,
                                                                    "with_group": True})
        assert finish.status_code == 200
        assert holders_in_xml(lv, prefix, pci_source(GPU_AUDIO)) == {vm}
    finally:
        agent.stop()
