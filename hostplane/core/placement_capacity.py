"""Hosts ordered by free capacity, so that a placement judges the best few hosts, not all.

The scheduler's score on a host is the share of the strategy's resource left free once the
VM is placed: `1 - (used + asked) / (total * overcommit)`. For hosts of one size that order
is the order of their use, whatever is asked (ties by the hosts' tie key, then id); hosts
of different sizes mix. So hosts are kept in one bucket per size, each sorted by (use,
tie, host id), and `best_first` merges the buckets lazily by each bucket's next host's
exact score: the order handed out is the scheduler's ranking order, (-score, tie, host
id), and a placement costs the
hosts it looks at plus the number of distinct sizes (a few CPU thread counts; memory
sizes as the hosts report them).

Tables are kept per key: None for every host that can take a VM at all (connected, enabled,
with some CPU and memory), and ("pci", vendor, device, n) for hosts with at least n
claimable PCI functions of that model, n a power of two up to 64 (`count_keys`). An ask
by count, of a GPU model or of a pool, reads the table of its model and the largest n not
above its count (`count_key`). Pools are matched at request time, so the index knows
models, not pools: a pool is a part of its model, a model's GPUs a part of its functions,
so a host outside that table cannot give the ask.
"""

import bisect
import heapq

from hostplane.core.pools import MAX_ASK

RESOURCES = ("cpu", "memory")
MARGIN = 1e-9   # a stop on "over the limit" waits this much, so float rounding hides no host


class CapacityIndex:
    def __init__(self):
        self.tables = {}    # (key, resource) → {size: _Bucket}
        self.entries = {}   # host id → [(key, resource, size, entry)]
        self.bulk = True    # while building: append, sort once in `finish`

    def add(self, host, keys):
        """File `host` under each of `keys`; hosts without CPU or memory are never filed."""
        if host.cpu_threads <= 0 or host.memory_mib <= 0:
            return
        keys = tuple(keys)
        filed = (("cpu", host.cpu_threads, (host.used_vcpus, host.tie, host.id)),   # by size
                 ("memory", host.memory_mib, (host.used_memory_mib, host.tie, host.id)))
        self.entries[host.id] = (keys, filed)   # one record per host, however many keys
        for resource, number, entry in filed:
            for key in keys:
                bucket = self.tables.setdefault((key, resource), {}).get(number)
                if bucket is None:
                    bucket = self.tables[(key, resource)][number] = _Bucket()
                bucket.add(entry, self.bulk)

    def remove(self, host_id):
        keys, filed = self.entries.pop(host_id, ((), ()))
        for resource, number, entry in filed:
            for key in keys:
                table = self.tables[(key, resource)]
                if table[number].remove(entry):
                    del table[number]
                    if not table:
                        del self.tables[(key, resource)]

    def finish(self):
        for table in self.tables.values():
            for bucket in table.values():
                bucket.entries.sort()
        self.bulk = False

    def __eq__(self, other):
        """Same hosts filed alike (a snapshot updated in place equals one built afresh)."""
        return isinstance(other, CapacityIndex) and self._contents() == other._contents()

    def _contents(self):
        return ({name: {number: b.entries for number, b in table.items()}
                 for name, table in self.tables.items()},
                {host_id: (sorted(keys, key=repr), filed)
                 for host_id, (keys, filed) in self.entries.items()})

    def size(self, key):
        return sum(len(b.entries) for b in self.tables.get((key, "cpu"), {}).values())

    def best_first(self, key, resource, asked, overcommit, hosts):
        """(use, score, host) of the hosts filed under `key`, best score first, ties by (tie,
        host id); `use` and `score` computed as the scheduler does. `hosts`: id → HostView."""
        buckets = list(self.tables.get((key, resource), {}).values())
        frontier = []
        for number, bucket in enumerate(buckets):
            _push(frontier, buckets, number, 0, hosts, resource, asked, overcommit)
        while frontier:
            neg_score, _, _, number, place, use, host = heapq.heappop(frontier)
            yield use, -neg_score, host
            _push(frontier, buckets, number, place + 1, hosts, resource, asked, overcommit)


def count_keys(model, free):
    """Keys of a host with `free` claimable PCI functions of `model` (vendor, device)."""
    return [("pci",) + model + (1 << power,) for power in range(min(free, MAX_ASK).bit_length())]


def count_key(model, count):
    """The table holding every host with at least `count` claimable functions of `model`."""
    return ("pci",) + model + (1 << (min(count, MAX_ASK).bit_length() - 1),)


def _use(host, resource, asked, overcommit):
    """The share in use once placed, computed exactly as the scheduler's judge does."""
    if resource == "cpu":
        return (host.used_vcpus + asked) / (host.cpu_threads * overcommit)
    return (host.used_memory_mib + asked) / (host.memory_mib * overcommit)


def _push(frontier, buckets, number, place, hosts, resource, asked, overcommit):
    """Queue bucket `number`'s host at `place` under its exact ranking key."""
    entries = buckets[number].entries
    if place < len(entries):
        host = hosts[entries[place][2]]
        use = _use(host, resource, asked, overcommit)
        heapq.heappush(frontier, (-(1.0 - use), host.tie, host.id, number, place, use, host))


class _Bucket:
    """Hosts of one size, sorted by (use, tie, host id)."""
    __slots__ = ("entries",)

    def __init__(self):
        self.entries = []

    def add(self, entry, bulk):
        if bulk:
            self.entries.append(entry)
        else:
            bisect.insort(self.entries, entry)

    def remove(self, entry):
        """Take `entry` out; True when the bucket is left empty."""
        del self.entries[bisect.bisect_left(self.entries, entry)]
        return not self.entries
