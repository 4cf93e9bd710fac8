"""PCI device records → the inventory model: type, IOMMU group, assignability.

Input is one plain dict per function as a sysfs reader produced it (see
`agent.inventory.sysfs.read_pci_function`); output is the JSON-ready dict of
INTERFACE.md. Everything here is pure, so tests feed it recorded values directly.
"""

import functools

# (class prefix, type): the longest matching prefix of the 6-digit class code wins.
_CLASS_TYPES = (
    ("0300", "gpu"), ("0302", "gpu"), ("0380", "gpu"),
    ("0108", "nvme"), ("01", "storage"),
    ("02", "nic"),
    ("0c03", "usb-controller"),
    ("06", "bridge"),
)
AUDIO_CLASS = "0403"
DEFAULT_CRITICAL_DRIVERS = ("virtio-pci", "ahci", "ata_piix", "megaraid_sas", "mpt3sas",
                            "smartpqi", "hpsa", "aacraid")


@functools.lru_cache(maxsize=512)
def type_for_class(class_code):
    """Device type from a class code such as "030200" (gpu-audio needs the siblings)."""
    code = class_code.lower()
    best = ("", "other")
    for prefix, kind in _CLASS_TYPES:
        if code.startswith(prefix) and len(prefix) > len(best[0]):
            best = (prefix, kind)
    return best[1]


def slot_of(address):
    """`0000:3b:00.1` → `0000:3b:00`: functions of one slot share a physical card."""
    return address.rsplit(".", 1)[0]


def build_pci_inventory(records, critical_drivers=DEFAULT_CRITICAL_DRIVERS, names=None):
    """Model dicts keyed by address, from raw records of every function on the host.

    `names(vendor_id, device_id)` → (vendor_name, device_name) or None; None skips names.
    """
    records = {r["address"]: r for r in records}
    groups = group_members(records.values())
    gpu_slots = {slot_of(a) for a, r in records.items()
                 if type_for_class(r["class_code"]) == "gpu"}
    devices = {}
    for address, record in sorted(records.items()):
        devices[address] = _model(record, records, groups, gpu_slots, critical_drivers, names)
    return devices


def group_members(records):
    """{group number: [addresses]} from each record's `iommu_group` (sorted lists)."""
    groups = {}
    for record in records:
        group = record.get("iommu_group")
        if group is not None:
            groups.setdefault(group, []).append(record["address"])
    return {group: sorted(members) for group, members in groups.items()}


def _model(record, records, groups, gpu_slots, critical_drivers, names):
    address = record["address"]
    kind = type_for_class(record["class_code"])
    if record["class_code"].startswith(AUDIO_CLASS) and slot_of(address) in gpu_slots:
        kind = "gpu-audio"
    vendor_name = device_name = None
    if names is not None:
        vendor_name, device_name = names(record["vendor_id"], record["device_id"])
    group = record.get("iommu_group")
    members = groups.get(group, []) if group is not None else []
    reason = not_assignable_reason(record, kind, members, records, critical_drivers)
    total_vfs = record.get("sriov_totalvfs")
    return {
        "id": address,
        "vendor_id": record["vendor_id"],
        "device_id": record["device_id"],
        "vendor_name": vendor_name,
        "device_name": device_name,
        "subsystem_vendor_id": record.get("subsystem_vendor_id"),
        "subsystem_device_id": record.get("subsystem_device_id"),
        "class_code": record["class_code"],
        "type": kind,
        "driver": record.get("driver"),
        "numa_node": record.get("numa_node"),
        "iommu_group": group,
        "iommu_group_devices": members,
        "assignable": reason is None,
        "not_assignable_reason": reason,
        "sriov": None if total_vfs is None else {
            "total_vfs": total_vfs,
            "num_vfs": record.get("sriov_numvfs") or 0,
            "vfs": sorted(record.get("virtfns") or []),
        },
        "physfn": record.get("physfn"),
        "attached_to": None,
    }


def not_assignable_reason(record, kind, members, records, critical_drivers):
    """Why this function cannot be handed to a VM, or None if it can."""
    address = record["address"]
    if kind == "bridge":
        return "bridges are not endpoints and cannot be passed through"
    if record.get("iommu_group") is None:
        return "no IOMMU group: the IOMMU is off or unsupported on this host"
    driver = record.get("driver")
    if driver in critical_drivers:
        return f"bound to host-critical driver {driver}"
    if record.get("sriov_numvfs"):
        return (f"SR-IOV physical function with {record['sriov_numvfs']} VFs enabled; "
                "pass its VFs through instead")
    for member in members:
        if member == address:
            continue
        other = records.get(member)
        if other is None:
            continue
        if type_for_class(other["class_code"]) == "bridge":
            return f"IOMMU group {record['iommu_group']} also holds bridge {member}"
        if other.get("driver") in critical_drivers:
            return (f"IOMMU group {record['iommu_group']} also holds {member}, "
                    f"bound to host-critical driver {other['driver']}")
    return None
