"""Turn an agent's `/v1/devices` answer into device rows, never silently freeing a claim.

`hostplane.core.reconcile` decides what was added, vanished or moved; this module only
writes its verdict. A vanished or moved device becomes `unavailable` and keeps its `vm`,
so an operator sees the conflict; it is deleted only by `DELETE /v1/devices/...`. When the
address of a moved device is later freed by that delete, the next fetch adds the newcomer.

A device the agent reports held by a domain is `attached`: to that VM when the controller
knows a VM of that name on this host, otherwise to no VM (`vm` null) — held by an orphan
domain, which `GET /v1/orphans` lists and an admin adopts or deletes. It is never shown
free, and never attached to a VM name the API cannot show.

A free device its agent calls not assignable is `not_assignable`, never `ready`; every
status change goes through `hostplane.core.device_states`.
"""

from hostplane.core import device_states, vm_states
from hostplane.core.reconcile import reconcile
from hostplane.core.usb import version_major

from controller.db.models import Device
from controller.vm_records import expected_domains


def reported_devices(body):
    """{id: agent device dict with `kind`}: every PCI function and every USB non-hub."""
    found = {}
    for device in body.get("pci", []):
        found[device["id"]] = {**device, "kind": "pci"}
    for device in body.get("usb", []):
        if not device.get("is_hub"):
            found[device["id"]] = {**device, "kind": "usb"}
    return found


def apply_report(session, host_id, body, holders=True):
    """Write one inventory answer for `host_id` into the session; returns the verdict.

    `holders=False`: the answer may predate a claim or release written meanwhile, so what
    it says of known devices' holders is not followed (a detached GPU is not taken back)."""
    rows = {row.id: row for row in session.query(Device).filter_by(host_id=host_id)}
    reported = reported_devices(body)
    verdict = reconcile(rows, reported)
    known = {name: ops for (host, name), ops in expected_domains(session, host_id).items()
             if host == host_id}
    for device_id in verdict.added:
        row = _new_row(host_id, reported[device_id])
        _follow_holder(row, known)
        session.add(row)
    for device_id in verdict.vanished:
        _mark_unavailable(rows[device_id], "not reported by the agent any more")
    for device_id in verdict.moved:
        _mark_unavailable(rows[device_id], "its address now holds a different device")
    lost = set(verdict.vanished) | set(verdict.moved)
    for device_id, row in rows.items():
        if device_id in reported and device_id not in lost:
            _refresh(row, reported[device_id])
            if holders:
                _follow_holder(row, known)
    return verdict


def _new_row(host_id, device):
    row = Device(host_id=host_id, id=device["id"], kind=device["kind"], state="enabled",
                 shared=False, name=_default_name(device))
    _copy_facts(row, device)
    device_states.start_free(row)
    return row


def _refresh(row, device):
    _copy_facts(row, device)
    if row.status == device_states.UNAVAILABLE and row.unavailable_reason:
        device_states.come_back(row)   # back where it was
        row.unavailable_reason = None
    else:
        device_states.settle_assignability(row)


def _copy_facts(row, device):
    """The agent's facts the controller filters and places on, as columns."""
    row.type = device.get("type") or "usb"
    row.vendor_id = device["vendor_id"]
    row.product_id = device.get("device_id") or device.get("product_id")
    row.assignable = bool(device.get("assignable", not device.get("is_hub", False)))
    row.not_assignable_reason = None if row.assignable else (
        device.get("not_assignable_reason") or "its agent says it cannot be passed through")
    row.iommu_group = device.get("iommu_group")
    row.subsystem_vendor_id = device.get("subsystem_vendor_id")
    row.subsystem_device_id = device.get("subsystem_device_id")
    row.physfn = device.get("physfn")
    row.numa_node = device.get("numa_node")
    row.upstream = device.get("upstream") or []
    row.link = device.get("link")
    row.usb_major = version_major(device.get("usb_version"))
    row.reported_vm = device.get("attached_to")
    row.facts = device
def _follow_holder(row, known_vms):
    """Held by a domain the agent reports: by its VM (same name and operation), or by an
    orphan; freed only when it was held outside the controller and no domain holds it
    any more. `known_vms`: {name: operation ids} of this host's VMs."""
    holder = row.reported_vm
    ours = holder and vm_states.domain_is_ours((row.facts or {}).get("attached_op"),
                                               known_vms.get(holder))
    if row.status in (device_states.READY, device_states.NOT_ASSIGNABLE) and holder:
        if ours:
            device_states.hold(row, holder)
        else:
            device_states.hold_outside(row)
    elif row.status == "attached" and row.vm is None:
        if not holder:
            device_states.let_go(row)
        elif ours:   # adopted since
            device_states.adopt(row, holder)


def _mark_unavailable(row, reason):
    if row.status != "unavailable":
        device_states.mark_unavailable(row)
    row.unavailable_reason = reason


def _default_name(device):
    if device["kind"] == "usb":
        words = [device.get("manufacturer"), device.get("product")]
    else:
        words = [device.get("vendor_name"), device.get("device_name")]
    name = " ".join(word for word in words if word)
    return (name or device["id"])[:255]
