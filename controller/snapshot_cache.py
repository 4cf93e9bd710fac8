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

Claims under way are assumed in the snapshot (`hold`, until `settled`): concurrent creates
in one process would otherwise all choose the same best host and all but one lose the race
for it. The assumption is put back on every reload of its host until its claim is settled;
then the host is read again as the database has it, unless a create's claim took just
what was assumed on the host as the snapshot had it (the assumption is then the
database's state, one revision on).
"""

import dataclasses
import gc
import threading
import time
import weakref

from sqlalchemy import event, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from controller.db.models import Host
from controller.placement_views import cluster_views, snapshot
from hostplane.core.scheduler import VmView, choose, place

# Reload everything when more than this share of hosts (and more than a few chunks of
# them) changed: one full read is then cheaper than many small ones.
FULL_RELOAD_SHARE = 0.2
FULL_RELOAD_MIN_HOSTS = 2000
IN_CHUNK = 500   # host ids per `IN (...)`, well under every database's parameter limit
# A snapshot this large is moved out of the garbage collector's sight once loaded: its
# millions of objects hold no cycles, and walking them made every full GC pass (and so
# random placements) take a few hundred milliseconds.
FREEZE_FROM_HOSTS = 1000
# A create's first attempt may place on a snapshot checked this long ago: its claim
# re-checks every ask on the chosen host's locked rows, and the process's own claims
# under way are held in the snapshot; a retry, an attach, an explain and a refusal
# always read the revisions.
CREATE_MAX_AGE_S = 0.5

_caches = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(db):
    with _caches_lock:
        cache = _caches.get(db)
        if cache is None:
            cache = _caches[db] = SnapshotCache(db)
        return cache


@event.listens_for(Session, "after_commit")
def _seen_here(session):
    """A write of this process other than a claim (a host or device changed, a VM gone):
    every cache reads the revisions before its next placement, so a create never misses
    what was changed here a moment ago."""
    bumped = session.info.pop("revisions_bumped", False)
    if bumped and not session.info.pop("held_claim", False):
        with _caches_lock:
            for cache in _caches.values():
                cache.stale_since = time.monotonic()
                cache.checked = float("-inf")
    session.info.pop("held_claim", None)


@event.listens_for(Session, "after_rollback")
def _forget_marks(session):
    session.info.pop("revisions_bumped", None)
    session.info.pop("held_claim", None)


class SnapshotCache:
    def __init__(self, db):
        self.db = db
        self.lock = threading.Lock()   # the snapshot is updated in place: one user at a time
        self.reading = threading.Lock()   # one refresh reads the database at a time
        self.snapshot = None
        self.revisions = {}            # host id → revision the snapshot holds
        self.fingerprint = None        # (host count, sum of revisions) when last refreshed
        self.checked = float("-inf")   # time.monotonic() of the last fingerprint match
        self.stale_since = float("-inf")   # of the last write here a refresh must see
        self.reloads = {"full": 0, "hosts": 0}   # what refreshes cost (bench, tests)
        self.held = {}                 # id(request) → (request, Candidate): claims under way
        self.unassumed = {}            # host id → its part as read, where claims are assumed
        self.dirty = set()             # hosts whose held claims settled: read them again

    def place(self, request, policy, every_host=True, hold=False, max_age=0.0):
        """`place` on a snapshot no older than this call's read of the revisions, or read
        up to `max_age` seconds ago when it finds a host; without `every_host`, `choose`:
        the chosen host alone (all reasons when none fits). With `hold`, the chosen host's
        devices and room count as taken until `settled`."""
        if time.monotonic() - self.checked > max_age:
            self.refresh(max_age)
        with self.lock:
            placement = (place if every_host else choose)(request, self.snapshot, policy)
        if placement.chosen is None and max_age > 0:   # a refusal is never from old rows
            return self.place(request, policy, every_host, hold)
        if hold and placement.chosen is not None:
            with self.lock:
                self.held[id(request)] = (request, placement.chosen)
                self._assume([(request, placement.chosen)])
        return placement

    def as_read(self, host_id):
        """(revision, (host view, devices, VMs)) of `host_id` as the database had it at
        that revision, without the claims under way here; None when unknown. A claim
        takes it instead of reading the rows again if the revision is still the same
        (placement_views.claim_snapshot)."""
        with self.lock:
            revision = self.revisions.get(host_id)
            part = self.unassumed.get(host_id) or (
                self.snapshot.index.parts.get(host_id) if self.snapshot else None)
        return None if revision is None or part is None else (revision, part)

    def settled(self, request, claimed=None):
        """The claim of `request` committed or gave up: read its host again next time —
        unless `claimed` (a create's committed claim: the Candidate, and the host row as
        the claim read it) is what the snapshot assumed, on the revision the snapshot
        holds. The database's host is then the snapshot's, one revision on (a claim bumps
        it once), and reading it again would cost this process a reload per create."""
        with self.lock:
            held = self.held.pop(id(request), None)
            if held is None:
                return
            host_id = held[1].host_id
            if claimed is not None and _as_assumed(held[1], *claimed, self.revisions):
                self.revisions[host_id] = claimed[1].revision + 1
                as_read = self.unassumed.pop(host_id, None)
                if as_read is not None and any(other[1].host_id == host_id
                                               for other in self.held.values()):
                    self.unassumed[host_id] = assumed(as_read, request, held[1])
            else:
                self.dirty.add(host_id)
            self.fingerprint = None

    def refresh(self, max_age=0.0):
        """Bring the snapshot up to the database's revisions. The database is read outside
        the snapshot's lock, so placements go on meanwhile on the snapshot as it was.

        One refresh at a time; a caller that waited for another's reads none itself when
        that one began after this call (or within `max_age` before it): under load, the
        threads queued behind a refresh would otherwise each read every revision again."""
        asked = time.monotonic()
        with self.reading:
            if self.checked >= asked - max_age:
                return
            self._read_revisions()

    def _read_revisions(self):
        with self.db.read() as session:
            checked = time.monotonic()
            fingerprint = tuple(session.connection().execute(_FINGERPRINT).one())
            with self.lock:
                if fingerprint == self.fingerprint:
                    self._checked(checked)
                    return
                dirty, self.dirty = self.dirty, set()
            self._refresh(session, dirty)
            with self.lock:
                self.fingerprint = fingerprint if not self.dirty else None
                self._checked(checked)

    def _checked(self, checked):
        """A read begun at `checked` is current, unless a write here committed after it
        began (it may have read the revisions before that commit)."""
        self.checked = checked if self.stale_since < checked else float("-inf")

    def _assume(self, claims):
        """Count `claims` ((request, Candidate), ...) in the snapshot, host by host."""
        changes = {}
        for request, chosen in claims:
            part = changes.get(chosen.host_id) or self.snapshot.index.parts.get(chosen.host_id)
            if part is not None:   # as read, before the first claim assumed on it
                self.unassumed.setdefault(chosen.host_id,
                                          self.snapshot.index.parts[chosen.host_id])
                changes[chosen.host_id] = assumed(part, request, chosen)
        if changes:
            self.snapshot.apply(changes)

    def _refresh(self, session, dirty):
        current = revisions(session)
        changed = [host_id for host_id, revision in current.items()
                   if self.revisions.get(host_id) != revision or host_id in dirty]
        gone = self.revisions.keys() - current.keys()
        if self.snapshot is None or len(changed) > max(FULL_RELOAD_MIN_HOSTS,
                                                      FULL_RELOAD_SHARE * len(current)):
            fresh = snapshot(session)
            with self.lock:
                self.snapshot = fresh
                self.unassumed = {}
                self._assume(self.held.values())
                self.revisions = current   # with the rows: a settle compares the two
            self.reloads["full"] += 1
            if len(current) >= FREEZE_FROM_HOSTS:
                gc.collect()
                gc.freeze()
            return
        changes = dict.fromkeys(gone)
        for start in range(0, len(changed), IN_CHUNK):
            chunk = changed[start:start + IN_CHUNK]
            changes.update(dict.fromkeys(chunk))   # deleted since the revisions were read
            changes.update(_parts(*cluster_views(session, chunk)))
        with self.lock:
            self.snapshot.apply(changes)
            for host_id in changes:
                self.unassumed.pop(host_id, None)
            self._assume([held for held in self.held.values() if held[1].host_id in changes])
            for host_id in changed:
                if host_id not in self.snapshot.index.hosts:
                    del current[host_id]   # gone before its rows were read: try again
            # under the lock with the rows it labels: a settle in between would take the
            # new rows (which hold its claim already) as the old revision's, plus its claim
            self.revisions = current
        self.reloads["hosts"] += len(changes)


def _as_assumed(assumed_candidate, chosen, host, revisions):
    """Did the claim take what the snapshot assumed, on the host as the snapshot has it?"""
    return (chosen.host_id == assumed_candidate.host_id == host.id
            and tuple(chosen.devices) == tuple(assumed_candidate.devices)
            and chosen.numa_node == assumed_candidate.numa_node
            and revisions.get(host.id) == host.revision)


def revisions(session):
    """{host id: revision} of every host. Read through the driver's own cursor: the
    cache reads every host's pair several times a second under load, and going through
    SQLAlchemy's result rows made that three times as dear (5,000 hosts: 4.6 → 1.4 ms)."""
    dialect = session.get_bind().dialect
    statement = _REVISIONS_SQL.get(dialect.name)
    if statement is None:
        statement = _REVISIONS_SQL[dialect.name] = str(_REVISIONS.compile(dialect=dialect))
    cursor = session.connection().connection.dbapi_connection.cursor()
    try:
        cursor.execute(statement)
        return dict(cursor.fetchall())
    except dialect.loaded_dbapi.Error as exc:   # as SQLAlchemy's own (the 503 handlers)
        raise DBAPIError.instance(statement, None, exc, dialect.loaded_dbapi.Error,
                                  dialect=dialect) from exc
    finally:
        cursor.close()


_REVISIONS = select(Host.__table__.c.id, Host.__table__.c.revision)
_FINGERPRINT = select(func.count(), func.coalesce(func.sum(Host.__table__.c.revision), 0))
_REVISIONS_SQL = {}   # dialect name → the statement as that database's SQL


def assumed(part, request, chosen):
    """(host, devices, VMs) of a host as they will be once `chosen` is claimed for `request`."""
    host, devices, vms = part
    taken = set(chosen.devices)
    devices = [dataclasses.replace(d, status="attached", vm=request.name)
               if (d.kind, d.id) in taken else d for d in devices]
    vm = request.existing_vm
    if vm is None or vm.host_id != host.id:   # the VM's room is counted here from now on
        host = dataclasses.replace(host, used_vcpus=host.used_vcpus + request.vcpus,
                                   used_memory_mib=host.used_memory_mib + request.memory_mib)
        vms = tuple(vms) + (VmView(request.name, host.id, "creating",
                                   request.anti_affinity_group, request.tenant,
                                   chosen.numa_node, request.vcpus, request.memory_mib),)
    return host, devices, vms


def _parts(hosts, devices, vms):
    """{host id: (host view, devices, VMs)} as `Snapshot.apply` takes them."""
    parts = {host.id: (host, [], []) for host in hosts}
    for device in devices:
        parts[device.host_id][1].append(device)
    for vm in vms:
        parts[vm.host_id][2].append(vm)
    return parts
