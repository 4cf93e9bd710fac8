"""NUMA and PCIe locality: which of a host's free GPUs to take, and on which NUMA node.

A VM whose GPUs sit under one PCIe switch moves data between them without crossing the
CPU; one whose GPUs, vCPUs and memory sit on one NUMA node never crosses the socket
link. So, for a request asking `numa` ("required" or "preferred") or `locality`
("same-switch" or "same-numa", for more than one GPU), a host's free GPUs are tried
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
        self.model_asks = [ask for ask in asks if ask.id is None]
        wanted = sum(ask.count for ask in asks)
        self.locality = request.locality if wanted > 1 else "any"
        self.max_bonus = ({"same-switch": 2, "same-numa": 1}.get(self.locality, 0)
                          + (request.numa != "none"))

    @staticmethod
    def wanted(request):
        return request.numa != "none" or (
            request.locality != "any" and sum(ask.count for ask in request.gpus) > 1)

    def arrange(self, host, vcpus, memory):
        """The best arrangement of the asked GPUs on `host` (which can give them somehow),
        or the reasons a required policy cannot be met there."""
        free = self._free_gpus(host)
        found = describe(free, host) if free else None
        nodes = self._node_room(host)
        best = None   # the first arrangement of the highest bonus; else the last refused
        for scope in self._scopes(free, host):
            devices, reasons = pick_pci(self.asks, host.id, self.index, self.shared_only,
                                        allowed=scope, pools=self.request.pools)
            if reasons:
                continue
            picked = [self.index.device(host.id, "pci", device_id) for _, device_id in devices]
            arrangement = self._judge(picked, host, nodes, vcpus, memory, devices, found)
            if best is None or best.reasons or (
                    not arrangement.reasons and arrangement.bonus > best.bonus):
                best = arrangement
        return best

    def _judge(self, picked, host, nodes, vcpus, memory, devices, found):
        """Switch locality weighs the GPUs; the NUMA node, every PCI function picked (a NIC
        asked by address pins the VM to its node as a GPU does)."""
        chosen = [device for device in picked if device.type == "gpu"]
        switches = {switch_of(device) for device in chosen}
        one_switch = len(switches) == 1 and None not in switches
        device_nodes = {node_of(device, host) for device in picked}
        one_node = len(device_nodes) == 1 and None not in device_nodes
        bonus, reasons = 0, []
        if self.locality == "same-switch":
            bonus += 2 if one_switch else 1 if one_node else 0
            if not one_switch and self.request.locality_mode == "required":
                reasons.append(Reason(f"no {len(chosen)} free GPUs under one switch ({found})",
                                      "locality_switch"))
        elif self.locality == "same-numa":
            bonus += 1 if one_node else 0
            if not one_node and self.request.locality_mode == "required":
                reasons.append(Reason(f"no {len(chosen)} free GPUs on one NUMA node ({found})",
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
        with the most room for the strategy's resource (lowest id on ties)."""
        fits = [node for node, (cpu, mib) in nodes.items() if vcpus <= cpu and memory <= mib]
        if chosen:
            if device_nodes is None:
                return None
            node = next(iter(device_nodes))
            return node if node in fits else None
        room = 0 if self.request.strategy == "least-cpu" else 1
        return min(fits, key=lambda node: (-nodes[node][room], node), default=None)

    def _numa_refusal(self, host, chosen, one_node, nodes, vcpus, memory):
        if not host.numa_nodes:
            return Reason("host NUMA nodes not reported", "numa_unknown")
        if chosen and not one_node:
            return Reason(f"asked devices span NUMA nodes ({describe(chosen, host)})", "numa_split")
        room = ", ".join(f"node {node}: {max(int(cpu), 0)} vCPUs, {max(int(mib), 0)} MiB free"
                         for node, (cpu, mib) in sorted(nodes.items()))
        return Reason(f"no NUMA node has room for {vcpus} vCPUs and {memory} MiB ({room})",
                      "numa_no_room")

    def _free_gpus(self, host):
        """Claimable GPUs of the asked models on `host` (shared ones, for a tenant)."""
        free = []
        per_host = self.index.gpu_models
        for ask in self.model_asks:
            for gpu in per_host.get((ask.vendor_id, ask.device_id), {}).get(host.id, ()):
                if (host.id, gpu.id) in self.index.blockers:
                    break   # sorted claimable first
                if gpu.shared or not self.shared_only:
                    free.append(gpu)
        return list({gpu.id: gpu for gpu in free}.values())

    def _scopes(self, free, host):
        """Sets of allowed GPU ids, best locality first; None: any free GPU."""
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


def describe(devices, host):
    """"4 GPUs 10de:20b5 free: 2 under switch 0000:10:00.0, 2 under switch 0000:20:00.0;
    NUMA node 0: 4" — what an operator needs to see why a host was or was not chosen."""
    models = sorted({f"{d.vendor_id}:{d.product_id}" for d in devices})
    switches, nodes = {}, {}
    for device in devices:
        where = switch_of(device)
        where = f"under switch {where}" if where else "under no switch"
        switches[where] = switches.get(where, 0) + 1
        node = node_of(device, host)
        node = f"NUMA node {node}" if node is not None else "NUMA node unknown"
        nodes[node] = nodes.get(node, 0) + 1
    plural = "GPU" if len(devices) == 1 else "GPUs"
    return (f"{len(devices)} {plural} {', '.join(models)} free: "
            + ", ".join(f"{count} {where}" for where, count in sorted(switches.items()))
            + "; " + ", ".join(f"{where}: {count}" for where, count in sorted(nodes.items())))


def _groups(free, key):
    """Allowed-id sets per value of `key` (None left out), fewest GPUs first (best fit)."""
    groups = {}
    for device in free:
        value = key(device)
        if value is not None:
            groups.setdefault(value, set()).add(device.id)
    return [ids for _, ids in sorted(groups.items(), key=lambda item: (len(item[1]), item[0]))]
