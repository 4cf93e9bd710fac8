"""Hosts ordered by free capacity, so that a placement judges the best few hosts, not all.

The scheduler's score on a host is the share of the strategy's resource left free once the
VM is placed: `1 - (used + asked) / (total * overcommit)`. For hosts of equal size that order
is the order of their share in use, whatever is asked; hosts of different sizes mix. So hosts
are kept in buckets of near-equal size (within 1/16 of a doubling), each bucket sorted by
share in use, and `best_first` merges the buckets lazily: a host is handed out only once no
host not yet looked at can score higher (a bucket's next host has a known lower bound on its
use). The order handed out is exactly the scheduler's ranking order, (-score, host id).

Tables are kept per key: None for every host that can take a VM at all (connected, enabled,
with some CPU and memory), ("gpu", vendor, device) for hosts with at least one claimable
GPU of that model. Any other key (a device pool) fits the same way.
"""

import bisect
import heapq
import math

RESOURCES = ("cpu", "memory")
BUCKETS_PER_DOUBLING = 16
MARGIN = 1e-9   # bounds are loosened by this much, so float rounding never hides a host


class CapacityIndex:
    def __init__(self):
        self.tables = {}    # (key, resource) → {bucket number: _Bucket}
        self.entries = {}   # host id → [(key, resource, bucket number, entry)]
        self.bulk = True    # while building: append, sort once in `finish`

    def add(self, host, keys):
        """File `host` under each of `keys`; hosts without CPU or memory are never filed."""
        if host.cpu_threads <= 0 or host.memory_mib <= 0:
            return
        filed = self.entries[host.id] = []
        for resource, used, total in (("cpu", host.used_vcpus, host.cpu_threads),
                                      ("memory", host.used_memory_mib, host.memory_mib)):
            number = bucket_of(total)
            entry = (used / total, host.id)
            for key in keys:
                bucket = self.tables.setdefault((key, resource), {}).get(number)
                if bucket is None:
                    bucket = self.tables[(key, resource)][number] = _Bucket()
                bucket.add(entry, total, self.bulk)
                filed.append((key, resource, number, entry, total))

    def remove(self, host_id):
        for key, resource, number, entry, total in self.entries.pop(host_id, ()):
            table = self.tables[(key, resource)]
            if table[number].remove(entry, total):
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
        return ({name: {number: (b.entries, b.sizes, b.largest) for number, b in table.items()}
                 for name, table in self.tables.items()},
                {host_id: sorted(filed, key=repr) for host_id, filed in self.entries.items()})

    def size(self, key):
        return sum(len(b.entries) for b in self.tables.get((key, "cpu"), {}).values())

    def best_first(self, key, resource, asked, overcommit, hosts):
        """(use, score, host) of the hosts filed under `key`, best score first, ties by host
        id; `use` and `score` computed as the scheduler does. `hosts`: id → HostView."""
        buckets = list(self.tables.get((key, resource), {}).values())
        frontier, ready = [], []
        for number, bucket in enumerate(buckets):
            _push(frontier, bucket, number, 0, asked, overcommit)
        while frontier or ready:
            while frontier and (not ready or -ready[0][0] <= 1.0 - frontier[0][0]):
                _, number, place = heapq.heappop(frontier)
                bucket = buckets[number]
                host = hosts[bucket.entries[place][1]]
                use = _use(host, resource, asked, overcommit)
                heapq.heappush(ready, (-(1.0 - use), host.id, use, host))
                _push(frontier, bucket, number, place + 1, asked, overcommit)
            neg_score, _, use, host = heapq.heappop(ready)
            yield use, -neg_score, host


def bucket_of(total):
    return math.floor(math.log2(total) * BUCKETS_PER_DOUBLING)


def _use(host, resource, asked, overcommit):
    """The share in use once placed, computed exactly as the scheduler's judge does."""
    if resource == "cpu":
        return (host.used_vcpus + asked) / (host.cpu_threads * overcommit)
    return (host.used_memory_mib + asked) / (host.memory_mib * overcommit)


def _push(frontier, bucket, number, place, asked, overcommit):
    """Queue a bucket's host at `place` under a lower bound of its use."""
    if place < len(bucket.entries):
        share = bucket.entries[place][0]
        floor = (share + asked / bucket.largest) / overcommit - MARGIN
        heapq.heappush(frontier, (floor, number, place))


class _Bucket:
    """Hosts of near-equal size, sorted by share in use; `largest`: the largest size in it."""
    __slots__ = ("entries", "sizes", "largest")

    def __init__(self):
        self.entries, self.sizes, self.largest = [], {}, 0

    def add(self, entry, total, bulk):
        if bulk:
            self.entries.append(entry)
        else:
            bisect.insort(self.entries, entry)
        self.sizes[total] = self.sizes.get(total, 0) + 1
        self.largest = max(self.largest, total)

    def remove(self, entry, total):
        """Take `entry` out; True when the bucket is left empty."""
        place = bisect.bisect_left(self.entries, entry)
        del self.entries[place]
        self.sizes[total] -= 1
        if not self.sizes[total]:
            del self.sizes[total]
            if total == self.largest:
                self.largest = max(self.sizes, default=0)
        return not self.entries

