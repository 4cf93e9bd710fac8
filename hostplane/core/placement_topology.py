"""NUMA and PCIe locality: which of a host's free devices to take, and on which NUMA node.

A VM whose GPUs sit under one PCIe switch moves data between them without crossing the
CPU; one whose GPUs, vCPUs and memory sit on one NUMA node never crosses the socket
link. So, for a request asking `numa` ("required" or "preferred") or `locality`
("same-switch" or "same-numa", for more than one device), a host's free devices of the
asks by count (GPU models and pools alike: `placement_devices.offers`) are tried
scope by scope: under one switch (the smallest switch that has enough), then on one NUMA
node, then anywhere. A required policy rejects the host when no scope satisfies it; a
preferred one adds to the score: +2 for one switch, +1 for one NUMA node (locality),
+1 for a NUMA node with room for the VM (numa). When numa is asked, the answer names
the node chosen, for the agent to pin the VM there.

A device's switch is the first function below its root port in its upstream chain (what
the inventory reports, root port first): devices below it reach each other through the
switch alone. A device right under a root port is under no switch.
"""

from dataclasses import dataclass

from hostplane.core.placement_devices import pick_pci
from hostplane.core.reasons import Reason

NUMA_POLICIES = ("none", "preferred", "required")
LOCALITIES = ("any", "same-switch", "same-numa")
LOCALITY_MODES = ("preferred", "required")


@dataclass(frozen=True, slots=True)
class NumaNode:
    """One NUMA node of a host as its agent reports it: CPU threads and memory on it."""
    id: int
    cpus: int
    memory_mib: int


@dataclass(frozen=True, slots=True)
class Arrangement:
    devices: tuple           # ((kind, id), ...) as pick_pci gives them
    reasons: tuple
    bonus: int = 0
    numa_node: int | None = None
    found: str | None = None   # what the host offers, for explain


def switch_of(device):
    upstream = device.upstream
    return upstream[1] if len(upstream) > 1 else None


class Topology:
    """Per-request constants; `arrange` is called once per host that can give the devices."""

    def __init__(self, request, policy, index, asks, shared_only):
        self.request, self.policy, self.index = request, policy, index
        self.asks, self.shared_only = asks, shared_only
        self.locality = request.locality if asked_count(request) > 1 else "any"
        self.max_bonus = ({"same-switch": 2, "same-numa": 1}.get(self.locality, 0)
                          + (request.numa != "none"))

    @staticmethod
    def wanted(request):
        return request.numa != "none" or (request.locality != "any"
                                          and asked_count(request) > 1)

    def arrange(self, host, vcpus, memory, offered):
        """The best arrangement of the asked devices on `host` (which can give them
        somehow), or the reasons a required policy cannot be met there. `offered`: the
        host's `offers` for the request, read once by the caller."""
        self.host_id = host.id
        free, titles = self._free(host, offered)
        found = describe(free, host, titles) if free else None
        nodes = self._node_room(host)
        free_ids = {device.id for device in free}
        best = None   # the first arrangement of the highest bonus; else the last refused
        for scope in self._scopes(free, host):
            devices, reasons = pick_pci(self.asks, host.id, self.index, self.shared_only,
                                        allowed=scope, offered=offered)
            if reasons:
                continue
            picked = [self.index.device(host.id, "pci", device_id) for _, device_id in devices]
            arrangement = self._judge(picked, host, nodes, vcpus, memory, devices, found,
                                      free_ids)
            if best is None or best.reasons or (
                    not arrangement.reasons and arrangement.bonus > best.bonus):
                best = arrangement
        return best

    def _judge(self, picked, host, nodes, vcpus, memory, devices, found, free_ids):
        """Switch locality weighs the GPUs and the devices asked by count; the NUMA node,
        every PCI function picked (a NIC asked by address pins the VM to its node as a GPU
        does)."""
        chosen = [device for device in picked if device.type == "gpu" or device.id in free_ids]
        noun = _noun(chosen)
        found = found or describe(chosen, host)   # asked by address: what was picked
        switches = {switch_of(device) for device in chosen}
        one_switch = len(switches) == 1 and None not in switches
        device_nodes = {node_of(device, host) for device in picked}
        one_node = len(device_nodes) == 1 and None not in device_nodes
        bonus, reasons = 0, []
        if self.locality == "same-switch":
            bonus += 2 if one_switch else 1 if one_node else 0
            if not one_switch and self.request.locality_mode == "required":
                reasons.append(Reason(f"no {len(chosen)} free {noun} under one switch ({found})",
                                      "locality_switch"))
        elif self.locality == "same-numa":
            bonus += 1 if one_node else 0
            if not one_node and self.request.locality_mode == "required":
                reasons.append(Reason(f"no {len(chosen)} free {noun} on one NUMA node ({found})",
                                      "locality_numa"))
        node = None
        if self.request.numa != "none":
            node = self._vm_node(picked, device_nodes if one_node else None, nodes, vcpus, memory)
            if node is not None:
                bonus += 1
            elif self.request.numa == "required":
                reasons.append(self._numa_refusal(host, picked, one_node, nodes, vcpus, memory))
        return Arrangement(devices, tuple(reasons), bonus, node, found)

    def _vm_node(self, chosen, device_nodes, nodes, vcpus, memory):
        """The node holding the devices, if the VM fits there; with no devices, the node
        with the most room for the strategy's resource (lowest id on ties). A VM pinned
        already (devices added later) stays on its node: the devices must be there."""
        pinned = self._pinned_node()
        if pinned is not None:
            return pinned if not chosen or device_nodes == {pinned} else None
        fits = [node for node, (cpu, mib) in nodes.items() if vcpus <= cpu and memory <= mib]
        if chosen:
            if device_nodes is None:
                return None
            node = next(iter(device_nodes))
            return node if node in fits else None
        room = 0 if self.request.strategy == "least-cpu" else 1
        return min(fits, key=lambda node: (-nodes[node][room], node), default=None)

    def _pinned_node(self):
        vm = self.request.existing_vm
        return vm.numa_node if vm is not None and vm.host_id == self.host_id else None

    def _numa_refusal(self, host, chosen, one_node, nodes, vcpus, memory):
        if not host.numa_nodes:
            return Reason("host NUMA nodes not reported", "numa_unknown")
        pinned = self._pinned_node()
        if pinned is not None:
            return Reason(f"the VM is pinned to NUMA node {pinned} and no asked device "
                          f"there is free ({describe(chosen, host)})", "numa_other_node")
        if chosen and not one_node:
            return Reason(f"asked devices span NUMA nodes ({describe(chosen, host)})", "numa_split")
        room = ", ".join(f"node {node}: {max(int(cpu), 0)} vCPUs, {max(int(mib), 0)} MiB free"
                         for node, (cpu, mib) in sorted(nodes.items()))
        return Reason(f"no NUMA node has room for {vcpus} vCPUs and {memory} MiB ({room})",
                      "numa_no_room")

    def _free(self, host, offered):
        """Claimable devices the asks by count may take on `host` (for a tenant, shared
        GPUs; any device of a pool shared with it), and the titles of the asks offering
        some ("10de:20b5", "of pool nvme")."""
        free, titles = {}, {}
        for offer in offered:
            for device in offer.devices:
                if (host.id, device.id) in self.index.blockers:
                    break   # sorted claimable first
                free[device.id] = device
                titles[offer.title] = None
        return list(free.values()), sorted(titles)

    def _scopes(self, free, host):
        """Sets of allowed device ids, best locality first; None: any free device."""
        scopes = []
        if self.locality == "same-switch":
            scopes += _groups(free, switch_of)
        if self.locality != "any" or self.request.numa != "none":
            scopes += _groups(free, lambda device: node_of(device, host))
        return scopes + [None]

    def _node_room(self, host):
        """{node id: (vCPUs free, MiB free)} counting the VMs pinned to each node."""
        rooms = {node.id: (node.cpus * self.policy.cpu_overcommit,
                           node.memory_mib * self.policy.memory_overcommit)
                 for node in host.numa_nodes}
        for vm in self.index.parts.get(host.id, (None, (), ()))[2]:
            if vm.numa_node in rooms and vm.name != getattr(self.request.existing_vm, "name", None):
                cpu, mib = rooms[vm.numa_node]
                rooms[vm.numa_node] = (cpu - vm.vcpus, mib - vm.memory_mib)
        return rooms


def node_of(device, host):
    """A device's NUMA node; on a host of one node, that node even when unreported."""
    if device.numa_node is not None and device.numa_node >= 0:
        return device.numa_node
    return host.numa_nodes[0].id if len(host.numa_nodes) == 1 else None


def describe(devices, host, titles=None):
    """"4 GPUs 10de:20b5 free: 2 under switch 0000:10:00.0, 2 under switch 0000:20:00.0;
    NUMA node 0: 4" — what an operator needs to see why a host was or was not chosen.
    `titles` name what was asked ("10de:20b5", "of pool nvme"); else the devices' models."""
    models = titles or sorted({f"{d.vendor_id}:{d.product_id}" for d in devices})
    switches, nodes = {}, {}
    for device in devices:
        where = switch_of(device)
        where = f"under switch {where}" if where else "under no switch"
        switches[where] = switches.get(where, 0) + 1
        node = node_of(device, host)
        node = f"NUMA node {node}" if node is not None else "NUMA node unknown"
        nodes[node] = nodes.get(node, 0) + 1
    return (f"{len(devices)} {_noun(devices)} {', '.join(models)} free: "
            + ", ".join(f"{count} {where}" for where, count in sorted(switches.items()))
            + "; " + ", ".join(f"{where}: {count}" for where, count in sorted(nodes.items())))


def asked_count(request):
    """Devices asked by GPU model or address and by pool: locality matters above one."""
    return sum(ask.count for ask in request.gpus) + sum(ask.count for ask in request.pools)


def _noun(devices):
    noun = "GPU" if all(device.type == "gpu" for device in devices) else "device"
    return noun if len(devices) == 1 else noun + "s"


def _groups(free, key):
    """Allowed-id sets per value of `key` (None left out), fewest devices first (best fit)."""
    groups = {}
    for device in free:
        value = key(device)
        if value is not None:
            groups.setdefault(value, set()).add(device.id)
    return [ids for _, ids in sorted(groups.items(), key=lambda item: (len(item[1]), item[0]))]
