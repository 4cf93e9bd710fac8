"""Device-locality placement: (request, snapshot of the cluster) → ranked hosts and reasons.

Pure and deterministic. The controller builds a `Snapshot` from its database, asks `place`,
then claims `Placement.chosen.devices` in one transaction. Every rejected host carries the
reasons an operator reads in a 422 or in `POST /v1/schedule/explain`: a sentence naming the
thing to fix ("GPU 0000:3b:00.0 attached to vm-7") that carries a stable code for programs
(hostplane.core.reasons).

Scores: the share of the strategy's resource (CPU or memory) left free on the host after the
placement, minus one per VM of the same soft anti-affinity group already there; higher is better.
"""

from dataclasses import dataclass, field

from hostplane.core.placement_capacity import MARGIN, count_key
from hostplane.core.placement_devices import (by_id_first, first_free_gpu, offers,
                                              one_gpu_shortcut, pick_pci, pick_usb,
                                              usb_global_reasons)
from hostplane.core.placement_index import SnapshotIndex
from hostplane.core.placement_locality import Locality
from hostplane.core.placement_pools import one_pool_shortcut
from hostplane.core.placement_topology import (LOCALITIES, LOCALITY_MODES, NUMA_POLICIES,
                                               Topology)
from hostplane.core.reasons import Reason

STRATEGIES = ("least-cpu", "least-memory")
ANTI_AFFINITY_MODES = ("enforced", "soft")
STRATEGY_MODES = ("enforced", "preferred")
IOMMU_OFF = Reason("host IOMMU switched off", "iommu_off")
IOMMU_NOT_READY = Reason("host IOMMU not ready", "iommu_not_ready")
DIRECT_LIMIT = 512   # `choose` judges this many possible hosts outright rather than by index


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
    numa_nodes: tuple = ()  # NumaNode per node, as the agent reports them; () unknown
    tie: str = ""          # hosts of equal score are taken in (tie, id) order


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
    numa_node: int | None = None
    upstream: tuple = ()   # PCI functions above it, root port first
    # what pool matches read besides the model (hostplane.core.pools)
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    physfn: str | None = None


@dataclass(frozen=True, slots=True)
class VmView:
    name: str
    host_id: str
    state: str
    anti_affinity_group: str | None = None
    tenant: str | None = None
    numa_node: int | None = None   # the node it is pinned to, counted against that node
    vcpus: int = 0
    memory_mib: int = 0
    # The create that made it (None: unknown to the snapshot). A claim for an existing VM
    # checks that the row it locks is still this VM, not a new one of the same name.
    op_id: str | None = None


@dataclass(frozen=True, init=False)
class Snapshot:
    """The cluster as the database saw it; indexes are built once, on construction.
    `devices` and `vms` are read back from the index, per host in host order. `hosts` is
    a list that `apply` changes in place: copying it for each changed host cost a
    placement on 100,000 hosts more than the placement itself."""
    hosts: list
    index: SnapshotIndex = field(repr=False, compare=False)
    _positions: dict | None = field(default=None, repr=False, compare=False)

    def __init__(self, hosts, devices, vms):
        object.__setattr__(self, "hosts", list(hosts))
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
            for host_id, part in changes.items():
                if part is not None:
                    self.hosts[self._positions[host_id]] = part[0]
        else:
            hosts = [self.index.hosts[host_id] for host_id in sorted(self.index.host_ids)]
            object.__setattr__(self, "_positions", None)
            object.__setattr__(self, "hosts", hosts)

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
    numa: str = "none"                 # required | preferred | none (placement_topology)
    locality: str = "any"              # same-switch | same-numa | any, for count > 1
    locality_mode: str = "preferred"   # required | preferred
    pools: tuple = ()                  # PoolAsk (hostplane.core.placement_pools)

    def __post_init__(self):
        object.__setattr__(self, "gpus", tuple(self.gpus))
        object.__setattr__(self, "pools", tuple(self.pools))
        object.__setattr__(self, "usb", tuple(self.usb))
        if self.vcpus < 1 or self.memory_mib < 1:
            raise ValueError("vcpus and memory_mib must be at least 1")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
        if self.anti_affinity not in ANTI_AFFINITY_MODES:
            raise ValueError(f"anti_affinity must be one of {', '.join(ANTI_AFFINITY_MODES)}")
        for name, allowed in (("numa", NUMA_POLICIES), ("locality", LOCALITIES),
                              ("locality_mode", LOCALITY_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")


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
    numa_node: int | None = None   # where the agent pins the VM (numa asked)
    found: str | None = None       # the free GPUs' switches and nodes (locality asked)


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
        reasons, candidate = judge(host)
        if everywhere or reasons:
            rejected[host.id] = everywhere + tuple(reasons)
        else:
            ranked.append(candidate)
    if possible is not None:   # built last: a young 10,000-entry dict slows every GC pass
        outside = locality.rejected(index.host_ids)
        for host_id in index.troubled.keys() & outside.keys():
            outside[host_id] = index.troubled[host_id] + outside[host_id]
        if everywhere:
            outside = {host_id: everywhere + reasons for host_id, reasons in outside.items()}
        outside.update(rejected)
        rejected = outside
    ranked.sort(key=lambda c: _rank(c, index))
    return Placement(tuple(ranked), rejected)


def choose(request, snapshot, policy=Policy()):
    """The host `place` would choose, found by judging the best few hosts, not all.

    Hosts are taken best score first from the capacity index (hosts with enough claimable
    functions of the model of an ask by count, GPU model or pool, or every host that can
    take a VM), so a placement on a large cluster costs the hosts it looks at. The answer is `place`'s first candidate alone,
    without the rejected hosts; when no host fits it is `place`'s whole answer, since the
    refusal lists every host's reasons.
    """
    index = snapshot.index
    if (request.usb and usb_global_reasons(request, index)) or min(
            policy.cpu_overcommit, policy.memory_overcommit) <= 0:
        return place(request, snapshot, policy)
    possible = Locality(request, index).possible
    judge = _Judge(request, policy, index)
    special = set(judge.group_hosts) | {judge.home}   # scores the index does not know
    if possible is not None and len(possible) <= DIRECT_LIMIT:
        special, possible, stream = possible, None, ()
    else:
        stream = _stream(judge, index, policy)
    best = None
    for host_id in special:
        if host_id in index.hosts and (possible is None or host_id in possible):
            best = _better(best, index.hosts[host_id], judge)
    limit = (1.0 if judge.limit is None else judge.limit) + MARGIN
    for use, score, host in stream:
        if best is not None and (-(score + judge.max_bonus), host.tie, host.id) > _rank(
                best, index):
            break
        if use > limit:   # over capacity or the enforced limit, and every later host too
            break
        if host.id not in special and (possible is None or host.id in possible):
            best = _better(best, host, judge)
    if best is None:
        return place(request, snapshot, policy)
    return Placement((best,), {})


def _stream(judge, index, policy):
    """Hosts best score first: those with enough claimable functions of the rarest model
    asked by count (a GPU model or a pool's model), or all."""
    keys = [count_key((ask.vendor_id, ask.device_id), ask.count)
            for ask in judge.gpu_asks if ask.id is None]
    keys += [count_key(ask.match.model, ask.count) for ask in judge.request.pools]
    key = min(keys, key=index.capacity.size) if keys else None
    if judge.cpu_strategy:
        return index.capacity.best_first(key, "cpu", judge.request.vcpus,
                                         policy.cpu_overcommit, index.hosts)
    return index.capacity.best_first(key, "memory", judge.request.memory_mib,
                                     policy.memory_overcommit, index.hosts)


def _better(best, host, judge):
    reasons, candidate = judge(host)
    if reasons or (best is not None and _rank(candidate, judge.index) > _rank(best,
                                                                             judge.index)):
        return best
    return candidate


def _rank(candidate, index):
    """The ranking order: best score first, equal scores in their hosts' (tie, id) order."""
    return -candidate.score, index.hosts[candidate.host_id].tie, candidate.host_id


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
        self.shortcut = (one_pool_shortcut(request, index) if request.pools
                         else one_gpu_shortcut(self.gpu_asks, index, self.shared_only))
        self.topology = None
        if Topology.wanted(request):
            self.topology = Topology(request, policy, index, self.gpu_asks, self.shared_only)
            self.shortcut = None
        self.max_bonus = self.topology.max_bonus if self.topology else 0

    def __call__(self, host):
        """(reasons, Candidate) for one host."""
        request, policy = self.request, self.policy
        reasons = list(self.index.host_reasons[host.id])
        vcpus, memory = request.vcpus, request.memory_mib
        if host.id == self.home:     # an existing VM is already counted on its own host
            vcpus = memory = 0
        cpu_total = host.cpu_threads * policy.cpu_overcommit
        memory_total = host.memory_mib * policy.memory_overcommit
        cpu_free, memory_free = cpu_total - host.used_vcpus, memory_total - host.used_memory_mib
        if vcpus > cpu_free:
            reasons.append(Reason(f"not enough CPU: {max(int(cpu_free), 0)} vCPUs free, "
                                  f"{vcpus} asked", "not_enough_cpu"))
        if memory > memory_free:
            reasons.append(Reason(f"not enough memory: {max(int(memory_free), 0)} MiB free, "
                                  f"{memory} asked", "not_enough_memory"))
        if self.cpu_strategy:
            use = (host.used_vcpus + vcpus) / cpu_total if cpu_total > 0 else 1.0
        else:
            use = (host.used_memory_mib + memory) / memory_total if memory_total > 0 else 1.0
        if self.limit is not None and use > self.limit:
            what = "CPU" if self.cpu_strategy else "memory"
            reasons.append(Reason(f"{what} use would be {use:.0%}, over the "
                                  f"{self.limit:.0%} limit of {request.strategy}",
                                  "strategy_limit"))
        score = 1.0 - use
        if self.group_hosts:
            score -= self._anti_affinity(host, reasons)
        devices, picked, offered = (), True, ()
        if self.gpu_asks or request.pools:
            if not host.iommu_enabled:
                reasons.append(IOMMU_OFF)
            elif not host.iommu_ready:
                reasons.append(IOMMU_NOT_READY)
            if self.shortcut is not None:
                devices = first_free_gpu(self.shortcut, host.id, self.index)
            if not devices:
                offered = offers(self.gpu_asks, request.pools, host.id, self.index,
                                 self.shared_only)
                devices, found = pick_pci(self.gpu_asks, host.id, self.index, self.shared_only,
                                          offered=offered)
                reasons += found
                picked = not found
        node = where = None
        if self.topology is not None and picked:   # the host can give them: arrange them
            arranged = self.topology.arrange(host, vcpus, memory, offered)
            reasons += arranged.reasons
            score += arranged.bonus
            devices, node, where = arranged.devices, arranged.numa_node, arranged.found
        if request.usb:
            usb, found = pick_usb(request.usb, host.id, self.index)
            reasons += found
            devices += usb
        return reasons, Candidate(host.id, score, devices, node, where)

    def _anti_affinity(self, host, reasons):
        """Penalty for soft anti-affinity; a reason when enforced."""
        others = [name for name in self.group_hosts.get(host.id, ()) if name != self.vm_name]
        if not others:
            return 0
        if self.enforce_group:
            reasons.append(Reason(f"anti-affinity group {self.group_name} has "
                                  f"{', '.join(others)} here", "anti_affinity"))
            return 0
        return len(others)
