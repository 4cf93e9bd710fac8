"""The scheduler's snapshot, kept per process and refreshed only where the cluster changed.

Building the snapshot of 10,000 hosts from the database takes most of a second; placing
one GPU on it takes milliseconds. So each controller process keeps its snapshot and, for
every placement, reads one cheap column: `hosts.revision`, which every transaction that
changes what the scheduler sees of a host, its devices or its VMs bumps
(controller.db.models). Hosts whose revision moved, appeared or vanished are reloaded and
swapped into the snapshot (`Snapshot.apply`); the rest is reused. Before even that, one
aggregate — the number of hosts and the sum of their revisions — tells whether anything
changed at all: revisions only grow, and a host registered again starts from a random
48-bit revision, so a change that leaves both equal is vanishingly unlikely.

A stale snapshot can only cost a retry: a claim re-runs the scheduler on the chosen host's
rows, locked and fresh, before it writes anything. The revision lives in the database, so
several controller processes stay correct, each with its own cache.
"""

import gc
import threading
import weakref

from sqlalchemy import func, select

from controller.db.models import Host
from controller.placement import cluster_views, snapshot
from hostplane.core.scheduler import choose, place

# Reload everything when more than this share of hosts (and more than a few chunks of
# them) changed: one full read is then cheaper than many small ones.
FULL_RELOAD_SHARE = 0.2
FULL_RELOAD_MIN_HOSTS = 2000
IN_CHUNK = 500   # host ids per `IN (...)`, well under every database's parameter limit
# A snapshot this large is moved out of the garbage collector's sight once loaded: its
# millions of objects hold no cycles, and walking them made every full GC pass (and so
# random placements) take a few hundred milliseconds.
FREEZE_FROM_HOSTS = 1000

_caches = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(db):
    with _caches_lock:
        cache = _caches.get(db)
        if cache is None:
            cache = _caches[db] = SnapshotCache(db)
        return cache


class SnapshotCache:
    def __init__(self, db):
        self.db = db
        self.lock = threading.Lock()   # the snapshot is updated in place: one user at a time
        self.snapshot = None
        self.revisions = {}            # host id → revision the snapshot holds
        self.fingerprint = None        # (host count, sum of revisions) when last refreshed
        self.reloads = {"full": 0, "hosts": 0}   # what refreshes cost (bench, tests)

    def place(self, request, policy, every_host=True):
        """`place` on a snapshot no older than this call's read of the revisions; without
        `every_host`, `choose`: the chosen host alone (all reasons when none fits)."""
        with self.db.read() as session:
            fingerprint = tuple(session.execute(
                select(func.count(), func.coalesce(func.sum(Host.revision), 0))).one())
            with self.lock:
                if fingerprint != self.fingerprint:
                    self._refresh(session)
                    self.fingerprint = fingerprint
                return (place if every_host else choose)(request, self.snapshot, policy)

    def _refresh(self, session):
        current = dict(session.execute(select(Host.__table__.c.id,
                                              Host.__table__.c.revision)).all())
        changed = [host_id for host_id, _ in current.items() - self.revisions.items()]
        gone = self.revisions.keys() - current.keys()
        if self.snapshot is None or len(changed) > max(FULL_RELOAD_MIN_HOSTS,
                                                      FULL_RELOAD_SHARE * len(current)):
            self.snapshot = snapshot(session)[0]
            self.revisions = current
            self.reloads["full"] += 1
            if len(current) >= FREEZE_FROM_HOSTS:
                gc.collect()
                gc.freeze()
            return
        changes = dict.fromkeys(gone)
        for start in range(0, len(changed), IN_CHUNK):
            chunk = changed[start:start + IN_CHUNK]
            changes.update(dict.fromkeys(chunk))   # deleted since the revisions were read
            changes.update(_parts(*cluster_views(session, chunk)[:3]))
        self.snapshot.apply(changes)
        for host_id in changed:
            if host_id not in self.snapshot.index.hosts:
                del current[host_id]   # gone before its rows were read: try again next time
        self.revisions = current
        self.reloads["hosts"] += len(changes)


def _parts(hosts, devices, vms):
    """{host id: (host view, devices, VMs)} as `Snapshot.apply` takes them."""
    parts = {host.id: (host, [], []) for host in hosts}
    for device in devices:
        parts[device.host_id][1].append(device)
    for vm in vms:
        parts[vm.host_id][2].append(vm)
    return parts
