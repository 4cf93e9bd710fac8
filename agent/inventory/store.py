"""The agent's live view of its devices, with a generation and a cached JSON body.

Readers (sysfs for PCI, udev or a captured tree for USB) fill it; the hot-plug monitor
updates one device at a time; the libvirt side pushes who holds what. Every change
recomputes a digest, so `generation` and the ETag move exactly when the answer does,
and the JSON body is serialised once per change rather than once per request.

What the host itself uses (mounts, swap, routes: `host_uses`) changes without a udev
event, so it is read again whenever it is older than `HOST_USES_TTL_S` at a read: an
attach asking for a device moments after `/boot` was mounted on it is refused.
"""

import hashlib
import json
import threading
import time

from hostplane.core.pci import build_pci_inventory, iommu_groups
from hostplane.core.usb import build_usb_device


HOST_USES_TTL_S = 2.0


class Inventory:
    def __init__(self, sysfs, usb_source, generation, critical_drivers, names=None,
                 host_uses=None):
        """`host_uses()` → {address: [uses]} on the live host; None: unknown (a captured tree)."""
        self.sysfs = sysfs
        self.usb_source = usb_source
        self.critical_drivers = tuple(critical_drivers)
        self.names = names
        self.host_uses_source = host_uses
        self._host_uses = None
        self._host_uses_at = None
        self._generation = generation
        self._lock = threading.RLock()
        self._pci_records = {}
        self._errors = []
        self._pci = {}
        self._usb = {}
        self._attachments = {}
        self._conflicts = {}
        self._operations = {}
        self._body = None
        self._listeners = []

    # --- filling ----------------------------------------------------------------------
    def scan(self):
        """Read every PCI function and USB device afresh."""
        found, errors = self.sysfs.read_pci_functions()
        records = {r["address"]: r for r in found}
        usb = self._build_usb(self.usb_source.all())
        with self._lock:
            self._pci_records = records
            self._errors = errors
            self._read_host_uses()
            self._rebuild_pci()
            self._usb = usb
            self._changed("scan")

    def refresh_pci(self, address):
        """Re-read one function after a hot-plug, bind or unbind event."""
        record = self.sysfs.read_pci_function(address)
        with self._lock:
            if record is None:
                self._pci_records.pop(address, None)
            else:
                self._pci_records[address] = record
            self._read_host_uses()
            self._rebuild_pci()
            self._changed(f"pci {address}")

    def refresh_usb(self, sys_name, attrs):
        """Add or replace the USB device at port `sys_name`; attrs None means removed."""
        with self._lock:
            current = {d["port"]: d for d in self._usb.values() if d["port"] != sys_name}
            if attrs is not None:
                device = build_usb_device(sys_name, attrs)
                current[sys_name] = device
            self._usb = _unique_usb_ids(list(current.values()))
            self._changed(f"usb {sys_name}")

    def set_attachments(self, attachments, conflicts=None, operations=None):
        """{"pci:<id>" | "usb:<id>": vm name} as libvirt's domain XML says,
        {key: [vm, ...]} for devices found in several domains, and {vm: operation id}
        (the controller's, from each domain's metadata) so a holder is told from another
        domain of the same name."""
        conflicts = dict(conflicts or {})
        operations = {vm: op for vm, op in (operations or {}).items()
                      if vm in attachments.values()}
        with self._lock:
            if (attachments, conflicts, operations) == (
                    self._attachments, self._conflicts, self._operations):
                return
            self._attachments = dict(attachments)
            self._conflicts = conflicts
            self._operations = operations
            self._body = None
            self._changed("attachments")

    def add_listener(self, callback):
        """callback(generation, reason) after every change (used to notify the controller)."""
        self._listeners.append(callback)

    # --- reading ----------------------------------------------------------------------
    def pci(self, device_id):
        self._refresh_host_uses_if_stale()
        with self._lock:
            device = self._pci.get(device_id)
            return None if device is None else self._with_holder("pci", device)

    def usb(self, device_id):
        with self._lock:
            device = self._usb.get(device_id)
            return None if device is None else self._with_holder("usb", device)

    def pci_devices(self):
        self._refresh_host_uses_if_stale()
        with self._lock:
            return [self._with_holder("pci", d) for d in self._pci.values()]

    def has_pci(self):
        """Any PCI function read (without copying each one as `pci_devices()` does)."""
        with self._lock:
            return bool(self._pci)

    def usb_devices(self):
        with self._lock:
            return [self._with_holder("usb", d) for d in self._usb.values()]

    def iommu_groups(self):
        groups = iommu_groups(self.pci_devices())
        return [{"group": number, "devices": sorted(d["id"] for d in members),
                 "viable": all(d["assignable"] for d in members),
                 "attached_to": sorted({d["attached_to"] for d in members if d["attached_to"]})}
                for number, members in sorted(groups.items())]

    @property
    def generation(self):
        return self.body()[1]

    def errors(self):
        """[{"kind", "id", "error"}]: functions in the tree that could not be read."""
        with self._lock:
            return list(self._errors)

    def body(self):
        """(JSON bytes, generation, etag) of `GET /v1/devices`, cached per change."""
        self._refresh_host_uses_if_stale()
        with self._lock:
            if self._body is None:
                self._body = self._render()
            return self._body

    def counts(self):
        """{(kind, type): n} for metrics."""
        totals = {}
        for device in self.pci_devices():
            key = ("pci", device["type"], "attached" if device["attached_to"] else "free")
            totals[key] = totals.get(key, 0) + 1
        for device in self.usb_devices():
            key = ("usb", "hub" if device["is_hub"] else "usb",
                   "attached" if device["attached_to"] else "free")
            totals[key] = totals.get(key, 0) + 1
        return totals

    # --- internals ----------------------------------------------------------------------
    def _build_usb(self, items):
        return _unique_usb_ids([build_usb_device(name, attrs) for name, attrs in items])

    def _rebuild_pci(self):
        self._pci = build_pci_inventory(self._pci_records.values(), self.critical_drivers,
                                        self.names, self._host_uses)

    def _read_host_uses(self):
        if self.host_uses_source is not None:
            self._host_uses = self.host_uses_source()
            self._host_uses_at = time.monotonic()

    def _refresh_host_uses_if_stale(self):
        if self.host_uses_source is None or self._host_uses_at is None:
            return
        if time.monotonic() - self._host_uses_at < HOST_USES_TTL_S:
            return
        with self._lock:
            if time.monotonic() - self._host_uses_at < HOST_USES_TTL_S:
                return
            before = self._host_uses
            self._read_host_uses()
            if self._host_uses != before:
                self._rebuild_pci()
                self._changed("host uses")

    def _with_holder(self, kind, device):
        device = dict(device)
        key = f"{kind}:{device['id']}"
        device["attached_to"] = self._attachments.get(key)
        device["attached_op"] = self._operations.get(device["attached_to"])
        if key in self._conflicts:
            device["conflicts"] = list(self._conflicts[key])
        return device

    def document(self):
        """`GET /v1/devices` as values, all but its generation."""
        with self._lock:
            return {"pci": self.pci_devices(), "usb": self.usb_devices(),
                    "errors": list(self._errors)}

    def _render(self):
        content = json.dumps(self.document(), separators=(",", ":")).encode()
        digest = hashlib.sha256(content).hexdigest()
        generation = self._generation.observe(digest)
        payload = b'{"generation":%d,' % generation + content[1:]
        return payload, generation, f'"{generation}-{digest[:20]}"'

    def _changed(self, reason):
        before = self._body[1] if self._body is not None else None
        self._body = None
        _, generation, _ = self.body()
        if generation != before:
            for callback in list(self._listeners):
                callback(generation, reason)


def _unique_usb_ids(devices):
    """Key by id; devices sharing a serial (cheap sticks do) fall back to port ids."""
    by_id = {}
    for device in devices:
        by_id.setdefault(device["id"], []).append(device)
    result = {}
    for device_id, same in by_id.items():
        if len(same) == 1:
            result[device_id] = same[0]
            continue
        for device in same:
            device = dict(device)
            device["id"] = f"{device['vendor_id']}:{device['product_id']}@{device['port']}"
            result[device["id"]] = device
    return dict(sorted(result.items()))
