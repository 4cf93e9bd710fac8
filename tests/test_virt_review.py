"""Review findings on agent/virt, checked on the real qemu:///system.

A device found in two domains' XML is reported, not silently given to one; detach
waits for the guest without the host lock; delete undefines a VM libvirt keeps
metadata for and re-reads the PCI devices it frees; attach/detach are timed.
"""

import threading

import libvirt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.check import readiness_rows
from agent.virt.attach import detach_live
from hostplane.errors import Conflict
from tests.conftest import AUTH
from tests.support import wait_for
from tests.test_virt_support import (GPU, OTHER_GPU, agent_client, config_for, create_vm,  # noqa: F401
                                     lv, pci_source, prefix)


@pytest.fixture
def agent(tmp_path, lv):  # noqa: F811
    with agent_client(tmp_path) as (client, agent_object):
        yield client, agent_object


def define_holding(conn, name, address):
    """A stopped VM defined behind the agent's back whose config holds `address`."""
    conn.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
        f"<hostdev mode='subsystem' type='pci' managed='yes'><source>{pci_source(address)}"
        "</source></hostdev></devices></domain>")


def test_a_device_in_two_vms_xml_is_a_reported_conflict_and_goes_nowhere_else(
        agent, lv, prefix, tmp_path):  # noqa: F811
    client, _ = agent
    first, second = f"{prefix}-one", f"{prefix}-two"
    define_holding(lv, second, GPU)
    define_holding(lv, first, GPU)

    def device():
        return client.get(f"/v1/devices/pci/{GPU}", headers=AUTH).get_json()
    assert wait_for(lambda: device().get("conflicts") == [first, second], timeout=15), device()

    create_vm(client, f"{prefix}-third")
    refused = client.post(f"/v1/vms/{prefix}-third/devices", headers=AUTH,
                          json={"type": "pci", "id": GPU})
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "device_conflict"
    assert refused.get_json()["error"]["details"]["vms"] == [first, second]

    rows = {row[0]: row for row in readiness_rows(config_for(tmp_path / "check"))}
    _name, ok, observed, _fix = rows["device in one VM only"]
    assert not ok and f"pci:{GPU} in {first}, {second}" in observed

    lv.lookupByName(second).undefine()
    assert wait_for(lambda: "conflicts" not in device() and device()["attached_to"] == first,
                    timeout=15)


TABLET = "<input type='tablet' bus='usb'><alias name='ua-tablet'/></input>"
NIC = "<interface type='user'><model type='virtio'/><alias name='ua-nic'/></interface>"


def test_a_detach_waiting_on_the_guest_does_not_hold_the_host_lock(tmp_path, lv, prefix):  # noqa: F811
    """A PCIe NIC of a guest with no OS is never released: the wait runs to its bound,
    and meanwhile the host lock (every attach on the host) is free."""
    name = f"{prefix}-slow"
    lv.createXML(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
                 "<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os>"
                 f"<devices>{NIC}</devices></domain>")
    with agent_client(tmp_path, detach_timeout_s=8.0) as (_, agent_object):
        virt = agent_object.virt
        outcome = {}

        def unplug():
            try:
                detach_live(virt, virt.domain(name), name, "ua-nic", NIC, "virtio NIC")
            except Conflict as exc:
                outcome["code"] = exc.code
        worker = threading.Thread(target=unplug)
        worker.start()
        assert wait_for(lambda: (name, "ua-nic") in virt._removals, timeout=10)
        with virt.lock.held():
            waiting = worker.is_alive()
        worker.join(30)
        assert waiting, "the host lock was only free once the detach had given up"
        assert outcome == {"code": "detach_timeout"}


def test_delete_undefines_a_vm_with_snapshot_metadata(agent, lv, prefix):  # noqa: F811
    client, _ = agent
    name = f"{prefix}-snap"
    create_vm(client, name)
    dom = lv.lookupByName(name)
    dom.snapshotCreateXML("<domainsnapshot><name>s1</name><state>shutoff</state>"
                          f"<creationTime>1</creationTime>{dom.XMLDesc(0)}</domainsnapshot>",
                          libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
    with pytest.raises(libvirt.libvirtError):      # what a flagless undefine runs into
        dom.undefine()
    assert client.delete(f"/v1/vms/{name}", headers=AUTH).status_code == 204
    assert name not in [d.name() for d in lv.listAllDomains()]


def test_delete_rereads_the_pci_devices_the_vm_frees(agent, lv, prefix, tmp_path):  # noqa: F811
    """libvirt rebinds a managed device to its host driver when the VM goes; the
    inventory must show the driver it is on now, not the one it had before."""
    client, _ = agent
    name = f"{prefix}-free"
    create_vm(client, name, devices=[{"type": "pci", "id": OTHER_GPU}])
    before = client.get("/v1/devices", headers=AUTH).get_json()["generation"]
    uevent = tmp_path / "sys" / "bus" / "pci" / "devices" / OTHER_GPU / "uevent"
    old = client.get(f"/v1/devices/pci/{OTHER_GPU}", headers=AUTH).get_json()["driver"]
    assert old and old != "nouveau"
    uevent.write_text(uevent.read_text().replace(f"DRIVER={old}", "DRIVER=nouveau"))

    assert client.delete(f"/v1/vms/{name}", headers=AUTH).status_code == 204
    device = client.get(f"/v1/devices/pci/{OTHER_GPU}", headers=AUTH).get_json()
    assert (device["driver"], device["attached_to"]) == ("nouveau", None)
    assert client.get("/v1/devices", headers=AUTH).get_json()["generation"] > before


def test_attach_and_detach_latency_is_exported_by_operation_kind_and_outcome(agent, prefix):  # noqa: F811
    client, _ = agent
    first, second = f"{prefix}-m1", f"{prefix}-m2"
    create_vm(client, first)
    create_vm(client, second)
    attach = {"type": "pci", "id": GPU}
    assert client.post(f"/v1/vms/{first}/devices", headers=AUTH, json=attach).status_code == 200
    assert client.post(f"/v1/vms/{second}/devices", headers=AUTH, json=attach).status_code == 409
    assert client.delete(f"/v1/vms/{first}/devices/{GPU}", headers=AUTH).status_code == 200

    text = client.get("/metrics").get_data(as_text=True)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "hostplane_agent_attach_seconds")
    counts = {(s.labels["operation"], s.labels["kind"], s.labels["outcome"]): s.value
              for s in family.samples if s.name.endswith("_count")}
    assert counts == {("attach", "pci", "ok"): 1, ("attach", "pci", "device_busy"): 1,
                      ("detach", "pci", "ok"): 1}
    sums = [s.value for s in family.samples if s.name.endswith("_sum")]
    assert all(value > 0 for value in sums)
