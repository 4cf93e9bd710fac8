"""Who may take a device: the refusals of an attach, as pure functions of inventory facts.

`holders` is {"pci:<id>" | "usb:<id>": vm name} freshly read from every domain's XML;
`device` is the inventory model (INTERFACE.md fields). Each check raises Conflict (409)
with a code and a sentence an operator can act on, or returns quietly.
"""

from hostplane.core.pci import sibling_ids
from hostplane.core.usb import limit_class
from hostplane.errors import Conflict


def check_pci(device, vm, holders, iommu_ready):
    address = device["id"]
    _check_free("pci", address, vm, holders)
    if not device["assignable"]:
        raise Conflict(f"{address} cannot be passed through: {device['not_assignable_reason']}",
                       code="device_not_assignable",
                       details={"device": address, "reason": device["not_assignable_reason"]})
    if not iommu_ready:
        raise Conflict("the host IOMMU is not ready (no IOMMU groups): enable VT-d/AMD-Vi and "
                       "intel_iommu=on/amd_iommu=on; see `hostplane-agent check`",
                       code="iommu_not_ready", details={"device": address})
    for member in sibling_ids(device):
        holder = holders.get(f"pci:{member}")
        if holder not in (None, vm):
            raise Conflict(f"{address} shares IOMMU group {device['iommu_group']} with {member}, "
                           f"which VM {holder} holds", code="group_member_busy",
                           details={"device": address, "member": member, "vm": holder,
                                    "iommu_group": device["iommu_group"]})


def check_usb(device, vm, holders, vm_usb_versions):
    """`vm_usb_versions`: usb_version strings of the USB devices the VM already holds."""
    device_id = device["id"]
    _check_free("usb", device_id, vm, holders)
    if device.get("is_hub"):
        raise Conflict(f"{device_id} is a USB hub; pass the devices behind it instead",
                       code="device_not_assignable", details={"device": device_id})
    major, limit = limit_class(device.get("usb_version"))
    used = sum(1 for version in vm_usb_versions if limit_class(version)[0] == major)
    if used >= limit:
        raise Conflict(f"VM {vm} already holds {used} USB {major}.x devices (limit {limit})",
                       code="usb_limit_reached",
                       details={"device": device_id, "usb_major": major, "limit": limit})


def check_no_conflict(kind, device_id, conflicts):
    """A device already in several VMs' XML goes nowhere else until an operator decides."""
    vms = conflicts.get(f"{kind}:{device_id}")
    if vms:
        raise Conflict(f"{device_id} is in the domain XML of several VMs ({', '.join(vms)}); "
                       "detach it from all but one (virsh detach-device --config) first",
                       code="device_conflict", details={"device": device_id, "vms": vms})


def group_endpoints(device, lookup):
    """The device and every other endpoint of its IOMMU group (a GPU and its audio)."""
    members = [device]
    for member in sibling_ids(device):
        other = lookup(member)
        if other is not None and other["type"] != "bridge":
            members.append(other)
    return members


def _check_free(kind, device_id, vm, holders):
    holder = holders.get(f"{kind}:{device_id}")
    if holder not in (None, vm):
        raise Conflict(f"{device_id} is attached to VM {holder}", code="device_busy",
                       details={"device": device_id, "vm": holder})
