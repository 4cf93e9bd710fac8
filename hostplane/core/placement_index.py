"""Indexes over a scheduler snapshot, built once so that a placement touches each host once.

What does not depend on the request is settled here: the reasons a host can take nothing
(disconnected, disabled, ...) and, per PCI device, why it cannot be claimed (attached,
disabled, its IOMMU group not viable). A placement then only reads dictionaries.
"""

import bisect

from hostplane.core.pci import iommu_groups
from hostplane.core.placement_capacity import CapacityIndex, count_keys
from hostplane.core.placement_pools import matching_devices
from hostplane.core.reasons import Reason

HOST_STATUS_REASONS = {"connecting": Reason("still connecting", "host_not_connected"),
                       "disconnected": Reason("disconnected", "host_not_connected")}
HOST_STATE_REASONS = {"disabled": Reason("disabled", "host_disabled"),
                      "maintenance": Reason("in maintenance", "host_maintenance")}


class SnapshotIndex:
    """Built host by host, so that `apply` can swap a few hosts of a large cluster in
    place instead of rebuilding the rest (the controller's snapshot cache)."""

    def __init__(self, hosts, devices, vms):
        self.hosts = {}             # host id → host
        self.clusters = {}          # cluster → {host ids}
        self.host_reasons = {}      # host id → reasons it takes nothing
        self.troubled = {}          # the same, hosts with reasons only
        self.devices = {}           # (host_id, kind, id) → device
        self.groups = {}            # (host_id, iommu_group) → [pci devices]
        self.gpu_models = {}        # (vendor_id, device_id) → {host_id: [gpus]}
        self.pci_models = {}        # the same for every PCI function (pool asks)
        self.usb_locations = {}     # usb id → [host ids], sorted
        self.pci_locations = {}     # pci address → {host_id: device}
        self.held = {}              # vm name → [devices it holds]
        self.blockers = {}          # (host_id, id) → why this PCI device cannot be claimed
        self.claims = {}            # (host_id, id) → (("pci", id), ...) of its whole IOMMU group
        self.anti_affinity = {}     # (tenant, group) → {host_id: [vm names]}
        self.pool_holders = {}      # pool match → {host ids with a device it fits}: filled
                                    # on its first ask (placement_pools), kept by _add/_remove
        self.parts = {}             # host id → (host, devices, vms): what `_remove` takes out
        self.capacity = CapacityIndex()   # hosts that can take a VM, by free capacity
        parts = {host.id: ([], []) for host in hosts}
        for device in devices:
            parts.setdefault(device.host_id, ([], []))[0].append(device)
        for vm in vms:
            parts.setdefault(vm.host_id, ([], []))[1].append(vm)
        for host in hosts:
            self._add(host, *parts[host.id])
        self.capacity.finish()
        self.host_ids = frozenset(self.hosts)

    def apply(self, changes):
        """Swap hosts in place: {host id: (host, devices, vms), or None for a host gone}.
        Not safe while a placement reads this index: the caller serialises the two."""
        joining_or_leaving = any((part is None) == (host_id in self.hosts)
                                 for host_id, part in changes.items())
        for host_id, part in changes.items():
            self._remove(host_id)
            if part is not None:
                self._add(*part)
        if joining_or_leaving:
            self.host_ids = frozenset(self.hosts)

    def _add(self, host, devices, vms):
        host_id = host.id
        self.parts[host_id] = (host, tuple(devices), tuple(vms))
        self.hosts[host_id] = host
        self.clusters.setdefault(host.cluster, set()).add(host_id)
        reasons = self.host_reasons[host_id] = host_reasons(host)
        if reasons:
            self.troubled[host_id] = reasons
        groups = iommu_groups(device for device in devices if device.kind == "pci")
        ungrouped, gpus, models = [], {}, {}
        for device in devices:
            self.devices[(host_id, device.kind, device.id)] = device
            if device.vm is not None:
                self.held.setdefault(device.vm, []).append(device)
            if device.kind == "usb":
                bisect.insort(self.usb_locations.setdefault(device.id, []), host_id)
                continue
            self.pci_locations.setdefault(device.id, {})[host_id] = device
            if device.iommu_group is None:
                ungrouped.append(device)
            models.setdefault((device.vendor_id, device.product_id), []).append(device)
            if device.type == "gpu":
                gpus.setdefault((device.vendor_id, device.product_id), []).append(device)
        for number, members in groups.items():
            self.groups[(host_id, number)] = members
            self._settle_group(host_id, number, members)
        for device in ungrouped:
            self._settle_group(host_id, None, [device])
        def claim_order(device):   # claimable first, smallest group first
            return ((host_id, device.id) in self.blockers,
                    len(groups.get(device.iommu_group, ())), device.id)
        for table, found_models in ((self.gpu_models, gpus), (self.pci_models, models)):
            for model, found in found_models.items():
                found.sort(key=claim_order)
                table.setdefault(model, {})[host_id] = found
        if not reasons:
            keys = [None]
            for model, found in models.items():
                free = 0
                while free < len(found) and (host_id, found[free].id) not in self.blockers:
                    free += 1   # sorted claimable first
                keys += count_keys(model, free)
            self.capacity.add(host, keys)
        for match, holders in self.pool_holders.items():
            if matching_devices(match, host_id, self):
                holders.add(host_id)
        for vm in vms:
            if vm.anti_affinity_group:
                per_host = self.anti_affinity.setdefault((vm.tenant, vm.anti_affinity_group), {})
                per_host.setdefault(host_id, []).append(vm.name)

    def _remove(self, host_id):
        part = self.parts.pop(host_id, None)
        if part is None:
            return
        host, devices, vms = part
        self.capacity.remove(host_id)
        del self.hosts[host_id], self.host_reasons[host_id]
        self.troubled.pop(host_id, None)
        for holders in self.pool_holders.values():
            holders.discard(host_id)
        _drop(self.clusters, host.cluster, lambda hosts: hosts.discard(host_id))
        for device in devices:
            key = (host_id, device.id)
            del self.devices[(host_id, device.kind, device.id)]
            if device.vm is not None:
                _drop(self.held, device.vm, lambda held: held.remove(device))
            if device.kind == "usb":
                _drop(self.usb_locations, device.id, lambda where: where.remove(host_id))
                continue
            _drop(self.pci_locations, device.id, lambda where: where.pop(host_id))
            self.groups.pop((host_id, device.iommu_group), None)
            self.blockers.pop(key, None)
            self.claims.pop(key, None)
            _drop(self.pci_models, (device.vendor_id, device.product_id),
                  lambda per_host: per_host.pop(host_id, None))
            if device.type == "gpu":
                _drop(self.gpu_models, (device.vendor_id, device.product_id),
                      lambda per_host: per_host.pop(host_id, None))
        for vm in vms:
            if vm.anti_affinity_group:
                _drop(self.anti_affinity, (vm.tenant, vm.anti_affinity_group),
                      lambda per_host: per_host.pop(host_id, None))

    def device(self, host_id, kind, device_id):
        return self.devices.get((host_id, kind, device_id))

    def usb_hosts(self, usb_id):
        return self.usb_locations.get(usb_id, ())

    def pci_hosts(self, device_id, shared_only):
        """Hosts holding this PCI address (that a tenant may see, when shared_only)."""
        holders = self.pci_locations.get(device_id, {})
        if shared_only:
            return {host_id for host_id, device in holders.items() if device.shared}
        return holders

    def gpu_model_hosts(self, vendor_id, device_id, shared_only):
        holders = self.gpu_models.get((vendor_id, device_id), {})
        if shared_only:
            return {host_id for host_id, gpus in holders.items() if any(g.shared for g in gpus)}
        return holders

    def _settle_group(self, host_id, number, members):
        """Blocker or claim of each member: VFIO hands the whole group to one VM or none."""
        keys = tuple(("pci", member.id) for member in members)
        holds = [member_blocker(member) for member in members]
        for place, device in enumerate(members):
            blocker = device_blocker(device)
            if blocker is None:
                for other, why in zip(members, holds):
                    if why and other is not device:
                        blocker = Reason(f"IOMMU group {number} not viable: {other.id} {why}",
                                         "iommu_group_not_viable")
                        break
            if blocker:
                self.blockers[(host_id, device.id)] = blocker
            else:   # the asked device first, then its siblings
                self.claims[(host_id, device.id)] = (keys[place],) + keys[:place] + keys[place + 1:]


def host_reasons(host):
    """Reasons a host takes no placement whatever is asked."""
    reasons = []
    if host.status in HOST_STATUS_REASONS:
        reasons.append(HOST_STATUS_REASONS[host.status])
    if host.state in HOST_STATE_REASONS:
        reasons.append(HOST_STATE_REASONS[host.state])
    return tuple(reasons)


def label(device):
    if device.kind == "usb":
        return "USB"
    return "GPU" if device.type == "gpu" else "PCI device"


def device_blocker(device):
    """Why this device itself cannot be claimed by anyone, or None."""
    name = f"{label(device)} {device.id}"
    if device.status == "unavailable":
        return Reason(f"{name} unavailable", "device_unavailable")
    if device.vm is not None:
        return Reason(f"{name} attached to {device.vm}", "device_attached")
    if device.status != "ready":
        return Reason(f"{name} {device.status}", "device_busy")
    if device.state != "enabled":
        return Reason(f"{name} disabled by admin", "device_disabled")
    if not device.assignable:
        return Reason(f"{name} not assignable", "device_not_assignable")
    return None


def member_blocker(member):
    """Why an IOMMU-group sibling stops its group being handed to a VM, or None."""
    if member.vm is not None:
        return f"attached to {member.vm}"
    if member.status == "unavailable":
        return "unavailable"
    if member.state != "enabled" or not member.assignable or member.status != "ready":
        return "held by host"
    return None


def _drop(table, key, change):
    """Apply `change` to the container at `table[key]`; forget the key once it is empty."""
    container = table.get(key)
    if container is None:   # emptied and forgotten by a sibling already
        return
    change(container)
    if not container:
        del table[key]
