"""Where a request can land at all, from indexes alone: the hosts holding every asked device.

Most hosts of a large cluster lack the asked GPU model or USB device; they are rejected
with what they lack ("no GPU 10de:1eb8 on this host", "USB ... is on host-b") plus their own
state, without weighing capacity or anti-affinity on them. Only the hosts left are judged in
full, which keeps a one-GPU placement over 10,000 hosts within milliseconds.
"""

from hostplane.core.reasons import Reason
from hostplane.core.placement_pools import no_pool_device, pool_hosts


def no_gpu_model(ask):
    return Reason(f"no GPU {ask.vendor_id}:{ask.device_id} on this host", "no_gpu_model")


def no_pci_device(device_id):
    return Reason(f"no PCI device {device_id} on this host", "no_such_device")


class Locality:
    """`possible`: the set of host ids worth judging, or None for every host."""

    def __init__(self, request, index):
        self.possible = None
        self.checks = []     # (host ids that pass, reason for the others)
        shared_only = request.tenant is not None
        if request.host is not None:
            self._narrow({request.host}, Reason(f"not the requested host {request.host}",
                                                "not_requested_host"))
        if request.cluster is not None:
            self._narrow(index.clusters.get(request.cluster, ()),
                         Reason(f"not in cluster {request.cluster}", "not_in_cluster"))
        self._existing_vm(request, index)
        for ask in request.gpus:
            if ask.id is not None:
                self._narrow(index.pci_hosts(ask.id, shared_only), no_pci_device(ask.id))
            else:
                self._narrow(index.gpu_model_hosts(ask.vendor_id, ask.device_id, shared_only),
                             no_gpu_model(ask))
        for ask in request.pools:
            self._narrow(pool_hosts(ask, index), no_pool_device(ask))
        for usb_id in request.usb:
            holders = index.usb_hosts(usb_id)
            self._narrow(holders, Reason(f"USB {usb_id} is on {', '.join(holders)}",
                                         "usb_elsewhere") if holders
                         else Reason(f"USB {usb_id} not found on any host", "usb_not_found"))

    def rejected(self, all_ids):
        """{host id: reasons} for the hosts outside `possible`, built by set operations.

        Hosts failing the same checks share one tuple, so ten thousand hosts cost a few
        set differences rather than ten thousand loops. `all_ids` is a set of every host id.
        """
        classes = [((), all_ids)]
        for passing, reason in self.checks:
            split = []
            for reasons, members in classes:
                failing = members.difference(passing)
                if not failing:
                    split.append((reasons, members))
                    continue
                split.append((reasons + (reason,), failing))
                if len(failing) < len(members):
                    split.append((reasons, members.intersection(passing)))
            classes = split
        rejected = {}
        for reasons, members in sorted(classes, key=lambda item: -len(item[1])):
            if reasons:
                if rejected:
                    rejected.update(dict.fromkeys(members, reasons))
                else:
                    rejected = dict.fromkeys(members, reasons)
        return rejected

    def _existing_vm(self, request, index):
        vm = request.existing_vm
        if vm is None:
            return
        if vm.state == "running":
            pinned = f"{vm.name} is running on {vm.host_id}"
        elif index.held.get(vm.name):
            pinned = f"{vm.name} holds devices on {vm.host_id}"
        elif not request.usb:
            pinned = f"{vm.name} is defined on {vm.host_id}"
        else:   # stopped, holds nothing, asks for USB: may move to the USB within its cluster
            home = index.hosts.get(vm.host_id)
            if home is not None:
                self._narrow(index.clusters.get(home.cluster, ()),
                             Reason(f"{vm.name} may move only within cluster {home.cluster}",
                                    "vm_pinned"))
            return
        self._narrow({vm.host_id}, Reason(pinned, "vm_pinned"))

    def _narrow(self, host_ids, reason):
        host_ids = host_ids if isinstance(host_ids, (set, frozenset, dict)) else set(host_ids)
        self.checks.append((host_ids, reason))
        if self.possible is None:   # the index's own set: read, never changed in place
            self.possible = host_ids
        else:
            self.possible = {host_id for host_id in self.possible if host_id in host_ids}
