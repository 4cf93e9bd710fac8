"""Indexes over a scheduler snapshot, built once so that a placement touches each host once.

What does not depend on the request is settled here: the reasons a host can take nothing
(disconnected, disabled, ...) and, per PCI device, why it cannot be claimed (attached,
disabled, its IOMMU group not viable). A placement then only reads dictionaries.
"""

HOST_STATUS_REASONS = {"connecting": "still connecting", "disconnected": "disconnected"}
HOST_STATE_REASONS = {"disabled": "disabled", "maintenance": "in maintenance"}


class SnapshotIndex:
    def __init__(self, hosts, devices, vms):
        self.hosts = {host.id: host for host in hosts}
        self.host_ids = frozenset(self.hosts)
        self.clusters = {}          # cluster → {host ids}
        for host in hosts:
            self.clusters.setdefault(host.cluster, set()).add(host.id)
        self.host_reasons = {host.id: host_reasons(host) for host in hosts}
        self.troubled = {host_id: r for host_id, r in self.host_reasons.items() if r}
        self.devices = {}           # (host_id, kind, id) → device
        self.groups = {}            # (host_id, iommu_group) → [pci devices]
        self.gpu_models = {}        # (vendor_id, device_id) → {host_id: [gpus]}
        self.usb_locations = {}     # usb id → [host ids]
        self.pci_locations = {}     # pci address → {host_id: device}
        self.held = {}              # vm name → [devices it holds]
        ungrouped = []
        for device in devices:
            self.devices[(device.host_id, device.kind, device.id)] = device
            if device.vm is not None:
                self.held.setdefault(device.vm, []).append(device)
            if device.kind == "usb":
                self.usb_locations.setdefault(device.id, []).append(device.host_id)
                continue
            self.pci_locations.setdefault(device.id, {})[device.host_id] = device
            if device.iommu_group is not None:
                self.groups.setdefault((device.host_id, device.iommu_group), []).append(device)
            else:
                ungrouped.append(device)
            if device.type == "gpu":
                per_host = self.gpu_models.setdefault((device.vendor_id, device.product_id), {})
                per_host.setdefault(device.host_id, []).append(device)
        self.blockers = {}          # (host_id, id) → why this PCI device cannot be claimed
        self.claims = {}            # (host_id, id) → (("pci", id), ...) of its whole IOMMU group
        for (host_id, number), members in self.groups.items():
            self._settle_group(host_id, number, members)
        for device in ungrouped:
            self._settle_group(device.host_id, None, [device])
        for per_host in self.gpu_models.values():   # claimable first, smallest group first
            for host_id, gpus in per_host.items():
                gpus.sort(key=lambda gpu: ((host_id, gpu.id) in self.blockers,
                                           len(self.groups.get((host_id, gpu.iommu_group), ())),
                                           gpu.id))
        self.anti_affinity = {}     # (tenant, group) → {host_id: [vm names]}
        for vm in vms:
            if vm.anti_affinity_group:
                per_host = self.anti_affinity.setdefault((vm.tenant, vm.anti_affinity_group), {})
                per_host.setdefault(vm.host_id, []).append(vm.name)

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
                        blocker = f"IOMMU group {number} not viable: {other.id} {why}"
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
        return f"{name} unavailable"
    if device.vm is not None:
        return f"{name} attached to {device.vm}"
    if device.status != "ready":
        return f"{name} {device.status}"
    if device.state != "enabled":
        return f"{name} disabled by admin"
    if not device.assignable:
        return f"{name} not assignable"
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
