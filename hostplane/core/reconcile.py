"""What changed between the devices the controller knows on a host and what its agent reports.

Pure: the poller passes the known rows and the agent's `/v1/devices` entries, then applies the
answer. A device that vanished, or whose address now holds a different device, is listed so
that it becomes `unavailable` — never freed silently, since a VM may still hold it.
"""

from dataclasses import dataclass, field

# The agent's device fields a resync copies into device columns of the same name
# (controller.sync, with a default where the agent leaves one out); every name is a column
# of the controller's device table, so none is silently dropped.
SYNCED_FIELDS = ("type", "assignable", "not_assignable_reason", "iommu_group", "numa_node",
                 "upstream", "link")


@dataclass
class Reconciliation:
    added: list = field(default_factory=list)      # reported, unknown so far
    vanished: list = field(default_factory=list)   # known, no longer reported
    moved: list = field(default_factory=list)      # the id now holds another vendor/product

    @property
    def unavailable(self):
        return self.vanished + self.moved


def reconcile(known, reported):
    """known: {id: row with id, kind, vendor_id, product_id, status, vm}; reported: {id: dict}."""
    result = Reconciliation()
    for device_id in sorted(reported.keys() - known.keys()):
        result.added.append(device_id)
    for device_id in sorted(known):
        row, fresh = known[device_id], reported.get(device_id)
        if fresh is None:
            if row.status != "unavailable":
                result.vanished.append(device_id)
            continue
        if identity(fresh) != (row.kind, row.vendor_id, row.product_id):
            result.moved.append(device_id)
    return result


def identity(reported_device):
    """(kind, vendor_id, product_id) of an agent device dict: PCI has `device_id`, USB not."""
    if "device_id" in reported_device:
        return "pci", reported_device["vendor_id"], reported_device["device_id"]
    return "usb", reported_device["vendor_id"], reported_device["product_id"]
