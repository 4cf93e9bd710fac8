"""Turn an agent's `/v1/devices` answer into device rows, never silently freeing a claim.

`hostplane.core.reconcile` decides what was added, vanished or moved; this module only
writes its verdict. A vanished or moved device becomes `unavailable` and keeps its `vm`,
so an operator sees the conflict; it is deleted only by `DELETE /v1/devices/...`. When the
address of a moved device is later freed by that delete, the next fetch adds the newcomer.
A free device its agent calls not assignable is `not_assignable`, never `ready`; every
status change goes through `hostplane.core.device_states`.
"""

from hostplane.core import device_states
from hostplane.core.reconcile import reconcile

from controller.db.models import Device


def reported_devices(body):
    """{id: agent device dict with `kind`}: every PCI function and every USB non-hub."""
    found = {}
    for device in body.get("pci", []):
        found[device["id"]] = {**device, "kind": "pci"}
    for device in body.get("usb", []):
        if not device.get("is_hub"):
            found[device["id"]] = {**device, "kind": "usb"}
    return found


def apply_report(session, host_id, body):
    """Write one inventory answer for `host_id` into the session; returns the verdict."""
    rows = {row.id: row for row in session.query(Device).filter_by(host_id=host_id)}
    reported = reported_devices(body)
    verdict = reconcile(rows, reported)
    for device_id in verdict.added:
        session.add(_new_row(host_id, reported[device_id]))
    for device_id in verdict.vanished:
        _mark_unavailable(rows[device_id], "not reported by the agent any more")
    for device_id in verdict.moved:
        _mark_unavailable(rows[device_id], "its address now holds a different device")
    lost = set(verdict.vanished) | set(verdict.moved)
    for device_id, row in rows.items():
        if device_id in reported and device_id not in lost:
            _refresh(row, reported[device_id])
    return verdict


def _new_row(host_id, device):
    row = Device(host_id=host_id, id=device["id"], kind=device["kind"], state="enabled",
                 shared=False, name=_default_name(device))
    _copy_facts(row, device)
    device_states.start_free(row)
    holder = device.get("attached_to")
    if holder:  # attached outside the controller: show it held, never offer it
        device_states.seen_held(row, holder)
    return row


def _refresh(row, device):
    _copy_facts(row, device)
    if row.status == device_states.UNAVAILABLE and row.unavailable_reason:
        device_states.come_back(row)   # back where it was
        row.unavailable_reason = None
    else:
        device_states.settle_assignability(row)
    if row.status in (device_states.READY, device_states.NOT_ASSIGNABLE) and row.reported_vm:
        device_states.seen_held(row, row.reported_vm)


def _copy_facts(row, device):
    """The agent's facts the controller filters and places on, as columns."""
    row.type = device.get("type") or "usb"
    row.vendor_id = device["vendor_id"]
    row.product_id = device.get("device_id") or device.get("product_id")
    row.assignable = bool(device.get("assignable", not device.get("is_hub", False)))
    row.not_assignable_reason = None if row.assignable else (
        device.get("not_assignable_reason") or "its agent says it cannot be passed through")
    row.iommu_group = device.get("iommu_group")
    row.numa_node = device.get("numa_node")
    row.upstream = device.get("upstream") or []
    row.link = device.get("link")
    row.usb_major = _usb_major(device.get("usb_version"))
    row.reported_vm = device.get("attached_to")
    row.facts = device


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


def _usb_major(version):
    try:
        return int(str(version).split(".", 1)[0]) if version else None
    except ValueError:
        return None
