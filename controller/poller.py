"""Keeps the device inventory fresh: health, then `/v1/devices` with `If-None-Match`.

One cycle takes a lease on the hosts it will poll with a single UPDATE, so several
controller processes on one database split the hosts instead of polling each twice (a
dead process's leases expire after two intervals). Hosts are polled by a bounded pool,
each after a random jitter; an unchanged host costs two small requests and no write of
its own (its `last_seen` is written with the others at the end of the cycle). `max_failures`
misses in a row mark a host `disconnected`; a new `boot_id` forces a full resync.
Agents' events call `fetch_now`, which bypasses the lease (a fetch is idempotent).
Each poll is timed and each failure counted per host (`install_metrics`); under several
gunicorn workers /metrics sums every worker's series (hostplane.service, multiprocess).
After each cycle, VM operations whose agent never answered (or whose controller process
died) are settled by asking the agent again (controller.recovery).
"""

import logging
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import or_, select, update

from controller.agents import NOT_MODIFIED, Agents
from controller.db.models import Host, utcnow
from controller.networks import after_resync
from controller.recovery import settle_abandoned_creates
from controller.sync import apply_report
from hostplane.core import host_states, numa
from hostplane.errors import ApiError
from hostplane.metrics import counter, histogram

log = logging.getLogger(__name__)


class Poller:
    def __init__(self, db, poll_config, agents=None):
        self.db = db
        self.interval = float(poll_config["interval_s"])
        self.timeout = float(poll_config["timeout_s"])
        self.max_failures = int(poll_config["max_failures"])
        self.jitter = float(poll_config["jitter_s"])
        self.pool = ThreadPoolExecutor(max_workers=int(poll_config["concurrency"]),
                                       thread_name_prefix="poll")
        self.agents = agents or Agents(poll_config)
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread = None
        self.latency = self.failed = None
        # A claim older than a create's agent call plus a cycle was abandoned by its
        # controller process.
        self.create_grace_s = self.agents.operation_s + self.interval

    def install_metrics(self, app):
        """Poll latency and failures per host (hosts only: cardinality stays the fleet's)."""
        self.latency = histogram(app, "hostplane_controller_poll_seconds",
                                 "Time to poll one agent (health, facts, devices)", ["host"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                                          5, 10, 30))
        self.failed = counter(app, "hostplane_controller_poll_failures",
                              "Polls of an agent that failed", ["host"])

    # --- running -----------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self):
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll_cycle()
            except Exception:  # noqa: BLE001 - a bad cycle must not end polling
                log.exception("poll cycle failed")
            try:
                self.settle_operations()
            except Exception:  # noqa: BLE001 - nor a bad recovery (database down)
                log.exception("settling VM operations failed")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def settle_operations(self, grace_s=None):
        """Ask agents about VM operations older than `grace_s` (default: the longest a
        create may wait for its agent, plus a cycle) and settle them; {name: outcome}."""
        return settle_abandoned_creates(self.db, self._client,
                                        self.create_grace_s if grace_s is None else grace_s)

    def poll_cycle(self, jitter=None):
        """Poll every host this process holds the lease of; returns {host_id: outcome}."""
        jitter = self.jitter if jitter is None else jitter
        hosts = self._lease_hosts()
        outcomes = dict(zip([h.id for h in hosts], self.pool.map(
            lambda host: self._poll(host, jitter), hosts)))
        unchanged = [host_id for host_id, outcome in outcomes.items() if outcome == "unchanged"]
        if unchanged:
            with self.db.write() as session:
                session.execute(update(Host).where(Host.id.in_(unchanged))
                                .values(last_seen=utcnow(), failures=0, last_error=None))
        return outcomes

    def fetch_now(self, host_id, background=True, event=None):
        """Fetch one host immediately (registration, agent events).

        An agent's `event` that carries the boot id on record of a connected host needs no
        health check first (one round trip less between a hot-plug and the inventory), and
        one whose generation is already recorded is another worker's copy of a change
        already fetched: nothing to do."""
        with self.db.read() as session:
            host = session.get(Host, host_id)
        if host is None:
            return None
        known = bool(event and event.get("boot_id") and host.status == "connected"
                     and event["boot_id"] == host.boot_id)
        if (known and event.get("generation") is not None and host.generation is not None
                and event["generation"] <= host.generation):
            return "current"
        if background:
            self.pool.submit(self._poll, host, 0.0, True, known)
            return "scheduled"
        return self._poll(host, 0.0, True, known)

    # --- one host ----------------------------------------------------------------------
    def _lease_hosts(self):
        now = utcnow()
        until = now + timedelta(seconds=max(2 * self.interval, 10 * self.timeout))
        with self.db.write() as session:
            session.execute(update(Host).where(or_(
                Host.poll_lease_until.is_(None), Host.poll_lease_until < now,
                Host.poll_owner == self.owner)).values(poll_owner=self.owner,
                                                       poll_lease_until=until))
            return list(session.scalars(select(Host).where(Host.poll_owner == self.owner)))

    def _client(self, host):
        return self.agents.of(host)

    def _poll(self, host, jitter, write_seen=False, known_boot=False):
        if jitter:
            time.sleep(random.uniform(0, jitter))  # nosec B311 - load spreading, no secret
        started = time.perf_counter()
        if self.failed is not None:
            self.failed.labels(host.id)   # a host that never failed shows 0, not nothing
        try:
            return self._poll_once(host, write_seen, known_boot)
        finally:
            if self.latency is not None:
                self.latency.labels(host.id).observe(time.perf_counter() - started)

    def _poll_once(self, host, write_seen, known_boot=False):
        client = self._client(host)
        try:
            health = ({"host_id": host.id, "boot_id": host.boot_id} if known_boot
                      else client.health())
            if health.get("host_id") not in (None, host.id):
                raise ValueError(f"agent now says it is host {health['host_id']}, not {host.id}")
            resync = health.get("boot_id") != host.boot_id or host.status != "connected"
            facts = client.host() if resync else None
            body, etag = client.devices(None if resync else host.etag)
        except (ApiError, ValueError, KeyError) as exc:
            return self._record_failure(host.id, exc)
        if body is NOT_MODIFIED and not write_seen:
            return "unchanged"
        def record(session):
            # the host row first, as every writer of a host's devices takes it
            row = session.scalars(self.db.locked(select(Host).where(Host.id == host.id))
                                  ).first()
            if row is None:
                return False
            if facts is not None:
                _apply_facts(row, facts, health)
            if body is not NOT_MODIFIED:
                # A claim or release written since `host` was read may postdate this
                # answer: then it says nothing of holders, and the next poll reads afresh.
                fresh = row.revision == host.revision
                apply_report(session, row.id, body, holders=fresh)
                row.etag, row.generation = ((etag, body.get("generation")) if fresh
                                            else (None, None))
            host_states.answered(row)
            row.last_seen = utcnow()
            return True
        if not self.db.transaction(record):
            return "deleted"
        if resync:
            after_resync(self, host.id)   # give a (re)connected host its cluster's networks
        return "resynced" if resync else "changed"

    def _record_failure(self, host_id, exc):
        message = getattr(exc, "message", None) or str(exc)
        if self.failed is not None:
            self.failed.labels(host_id).inc()
        with self.db.write() as session:
            row = session.get(Host, host_id)
            if row is None:
                return "deleted"
            host_states.poll_failed(row, message, self.max_failures)
        log.info("host %s: poll failed (%s)", host_id, message)
        return "failed"


def _apply_facts(row, facts, health):
    """Identity and capacity, read again whenever the agent restarted or reconnects."""
    iommu = facts.get("iommu") or {}
    cpu = facts.get("cpu") or {}
    row.boot_id = health.get("boot_id")
    row.hostname = facts.get("hostname")
    row.cpu_threads = int(cpu.get("threads") or 0)
    row.memory_mib = int(facts.get("memory_mib") or 0)
    row.numa_nodes = numa.reported_nodes(facts.get("numa_nodes"))
    row.iommu_ready = bool(iommu.get("kernel_enabled") and iommu.get("ready"))
