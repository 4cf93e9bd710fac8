"""Device-locality placement: (request, snapshot of the cluster) → ranked hosts and reasons.

Pure and deterministic. The controller builds a `Snapshot` from its database, asks `place`,
then claims `Placement.chosen.devices` in one transaction. Every rejected host carries the
reasons an operator reads in a 422 or in `POST /v1/schedule/explain`, so a reason names the
thing to fix ("GPU 0000:3b:00.0 attached to vm-7"), never a code.

Scores: the share of the strategy's resource (CPU or memory) left free on the host after the
placement, minus one per VM of the same soft anti-affinity group already there; higher is better.
"""

from dataclasses import dataclass, field

from hostplane.core.placement_devices import (by_id_first, first_free_gpu, one_gpu_shortcut,
                                              pick_pci, pick_usb, usb_global_reasons)
from hostplane.core.placement_index import SnapshotIndex
from hostplane.core.placement_locality import Locality
from hostplane.core.usb import PER_VM_LIMITS

USB_LIMITS = PER_VM_LIMITS
STRATEGIES = ("least-cpu", "least-memory")
ANTI_AFFINITY_MODES = ("enforced", "soft")
STRATEGY_MODES = ("enforced", "preferred")


@dataclass(frozen=True, slots=True)
class HostView:
    id: str
    cluster: str
    status: str            # connecting | connected | disconnected
    state: str             # enabled | disabled | maintenance
    iommu_enabled: bool    # the controller's admin switch
    iommu_ready: bool      # what the agent reports: kernel IOMMU on and ready
    cpu_threads: int
    memory_mib: int
    used_vcpus: int        # sums over VMs placed or claimed on the host
    used_memory_mib: int


@dataclass(frozen=True, slots=True)
class DeviceView:
    host_id: str
    kind: str              # pci | usb
    id: str
    type: str              # gpu, gpu-audio, nic, ... or usb
    vendor_id: str
    product_id: str        # PCI device_id or USB product_id
    state: str             # enabled | disabled
    status: str            # ready | attached | unavailable
    vm: str | None
    shared: bool
    assignable: bool
    iommu_group: int | None
    usb_major: int | None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class VmView:
    name: str
    host_id: str
    state: str
    anti_affinity_group: str | None = None
    tenant: str | None = None


@dataclass(frozen=True, init=False)
class Snapshot:
    """The cluster as the database saw it; indexes are built once, on construction.
    `devices` and `vms` are read back from the index, per host in host order."""
    hosts: tuple
    index: SnapshotIndex = field(repr=False, compare=False)
    _positions: dict | None = field(default=None, repr=False, compare=False)

    def __init__(self, hosts, devices, vms):
        object.__setattr__(self, "hosts", tuple(hosts))
        object.__setattr__(self, "_positions", None)
        object.__setattr__(self, "index", SnapshotIndex(self.hosts, devices, vms))

    @classmethod
    def build(cls, hosts, devices, vms):
        return cls(tuple(hosts), tuple(devices), tuple(vms))

    def apply(self, changes):
        """Swap some hosts in place: {host id: (HostView, devices, vms), or None for a
        host gone}. Costs the changed hosts, not a rebuild; the caller makes sure no
        placement reads this snapshot meanwhile (the controller's cache holds a lock)."""
        before = self.index.host_ids
        self.index.apply(changes)
        if self.index.host_ids is before:   # same hosts: swap the changed ones in place
            if self._positions is None:
                object.__setattr__(self, "_positions",
                                   {host.id: place for place, host in enumerate(self.hosts)})
            hosts = list(self.hosts)
            for host_id, part in changes.items():
                if part is not None:
                    hosts[self._positions[host_id]] = part[0]
        else:
            hosts = [self.index.hosts[host_id] for host_id in sorted(self.index.host_ids)]
            object.__setattr__(self, "_positions", None)
        object.__setattr__(self, "hosts", tuple(hosts))

    @property
    def devices(self):
        return tuple(d for h in self.hosts for d in self.index.parts[h.id][1])

    @property
    def vms(self):
        return tuple(v for h in self.hosts for v in self.index.parts[h.id][2])


@dataclass(frozen=True, slots=True)
class GpuAsk:
    """One GPU by PCI address, or `count` GPUs of one vendor/device model."""
    id: str | None = None
    vendor_id: str | None = None
    device_id: str | None = None
    count: int = 1

    def __post_init__(self):
        if self.id is None and (self.vendor_id is None or self.device_id is None):
            raise ValueError("a GPU is asked by id or by vendor_id and device_id")
        if self.count < 1:
            raise ValueError("GPU count must be at least 1")
        if self.id is not None and self.count != 1:
            raise ValueError("a GPU asked by id is one GPU: count must be 1")


@dataclass(frozen=True)
class PlacementRequest:
    name: str
    vcpus: int
    memory_mib: int
    gpus: tuple = ()
    usb: tuple = ()
    host: str | None = None
    cluster: str | None = None
    anti_affinity_group: str | None = None
    anti_affinity: str = "enforced"
    strategy: str = "least-cpu"
    tenant: str | None = None          # None: admin
    existing_vm: VmView | None = None  # adding devices to a VM that already exists

    def __post_init__(self):
        object.__setattr__(self, "gpus", tuple(self.gpus))
        object.__setattr__(self, "usb", tuple(self.usb))
        if self.vcpus < 1 or self.memory_mib < 1:
            raise ValueError("vcpus and memory_mib must be at least 1")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.anti_affinity not in ANTI_AFFINITY_MODES:
            raise ValueError(f"anti_affinity must be one of {', '.join(ANTI_AFFINITY_MODES)}")


@dataclass(frozen=True)
class Policy:
    cpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0
    strategy_mode: str = "preferred"
    strategy_limit: float = 0.8   # enforced: highest share of the resource in use once placed

    def __post_init__(self):
        if self.strategy_mode not in STRATEGY_MODES:
            raise ValueError(f"strategy_mode must be one of {', '.join(STRATEGY_MODES)}")


@dataclass(frozen=True, slots=True)
class Candidate:
    host_id: str
    score: float
    devices: tuple   # ((kind, id), ...) to claim, IOMMU-group siblings included
    numa_node: int | None = None   # the host NUMA node to pin the VM to, when one was chosen


@dataclass(frozen=True)
class Placement:
    ranked: tuple
    rejected: dict

    @property
    def chosen(self):
        return self.ranked[0] if self.ranked else None


def place(request, snapshot, policy=Policy()):
    """Rank every host able to run the request; give every other host its reasons.

    Hosts lacking an asked device (or not the asked host, cluster, or the VM's own host)
    are rejected with what they lack and their state; the others are judged in full.
    """
    index = snapshot.index
    everywhere = tuple(usb_global_reasons(request, index))
    locality = Locality(request, index)
    possible = locality.possible
    judge = _Judge(request, policy, index)
    ranked, rejected = [], {}
    hosts = snapshot.hosts if possible is None else [
        index.hosts[host_id] for host_id in sorted(possible) if host_id in index.hosts]
    for host in hosts:
        reasons, score, devices = judge(host)
        if everywhere or reasons:
            rejected[host.id] = everywhere + tuple(reasons)
        else:
            ranked.append(Candidate(host.id, score, devices))
    if possible is not None:   # built last: a young 10,000-entry dict slows every GC pass
        outside = locality.rejected(index.host_ids)
        for host_id in index.troubled.keys() & outside.keys():
            outside[host_id] = index.troubled[host_id] + outside[host_id]
        if everywhere:
            outside = {host_id: everywhere + reasons for host_id, reasons in outside.items()}
        outside.update(rejected)
        rejected = outside
    ranked.sort(key=lambda c: (-c.score, c.host_id))
    return Placement(tuple(ranked), rejected)


class _Judge:
    """Per-request constants computed once, then one call per host that holds the devices."""

    def __init__(self, request, policy, index):
        self.request, self.policy, self.index = request, policy, index
        vm = request.existing_vm
        self.home = vm.host_id if vm else None
        self.vm_name = vm.name if vm else None
        group = request.anti_affinity_group or (vm.anti_affinity_group if vm else None)
        self.group_name = group
        self.group_hosts = index.anti_affinity.get((request.tenant, group), {}) if group else {}
        self.enforce_group = request.anti_affinity == "enforced"
        self.cpu_strategy = request.strategy == "least-cpu"
        self.limit = policy.strategy_limit if policy.strategy_mode == "enforced" else None
        self.gpu_asks = by_id_first(request.gpus)
        self.shared_only = request.tenant is not None
        self.shortcut = one_gpu_shortcut(self.gpu_asks, index, self.shared_only)

    def __call__(self, host):
        """(reasons, score, devices) for one host."""
        request, policy = self.request, self.policy
        reasons = list(self.index.host_reasons[host.id])
        vcpus, memory = request.vcpus, request.memory_mib
        if host.id == self.home:     # an existing VM is already counted on its own host
            vcpus = memory = 0
        cpu_total = host.cpu_threads * policy.cpu_overcommit
        memory_total = host.memory_mib * policy.memory_overcommit
        cpu_free, memory_free = cpu_total - host.used_vcpus, memory_total - host.used_memory_mib
        if vcpus > cpu_free:
            reasons.append(f"not enough CPU: {max(int(cpu_free), 0)} vCPUs free, {vcpus} asked")
        if memory > memory_free:
            reasons.append(f"not enough memory: {max(int(memory_free), 0)} MiB free, "
                           f"{memory} asked")
        if self.cpu_strategy:
            use = (host.used_vcpus + vcpus) / cpu_total if cpu_total > 0 else 1.0
        else:
            use = (host.used_memory_mib + memory) / memory_total if memory_total > 0 else 1.0
        if self.limit is not None and use > self.limit:
            what = "CPU" if self.cpu_strategy else "memory"
            reasons.append(f"{what} use would be {use:.0%}, over the "
                           f"{self.limit:.0%} limit of {request.strategy}")
        score = 1.0 - use
        if self.group_hosts:
            score -= self._anti_affinity(host, reasons)
        devices = ()
        if self.gpu_asks:
            if not host.iommu_enabled:
                reasons.append("host IOMMU switched off")
            elif not host.iommu_ready:
                reasons.append("host IOMMU not ready")
            if self.shortcut is not None:
                devices = first_free_gpu(self.shortcut, host.id, self.index)
            if not devices:
                devices, found = pick_pci(self.gpu_asks, host.id, self.index, self.shared_only)
                reasons += found
        if request.usb:
            usb, found = pick_usb(request.usb, host.id, self.index)
            reasons += found
            devices += usb
        return reasons, score, devices

    def _anti_affinity(self, host, reasons):
        """Penalty for soft anti-affinity; a reason when enforced."""
        others = [name for name in self.group_hosts.get(host.id, ()) if name != self.vm_name]
        if not others:
            return 0
        if self.enforce_group:
            reasons.append(f"anti-affinity group {self.group_name} has {', '.join(others)} here")
            return 0
        return len(others)
