"""The controller's state: hosts, their devices, VMs. Everything else is derived."""

from datetime import datetime, timezone

import secrets

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index,
                        Integer, String, Text)
from sqlalchemy import bindparam, event, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, attributes, mapped_column


def utcnow():
    return datetime.now(timezone.utc)


def iso(moment):
    """A stored timestamp as the API answers it (ISO 8601, UTC), or None: SQLite gives
    back what it stored without its zone, PostgreSQL with it; the answer is the same."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def first_revision():
    """A random start, so a host deleted and registered again never repeats a revision
    that a controller process may still hold in its snapshot cache."""
    return secrets.randbits(48)


class Base(DeclarativeBase):
    pass


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    url: Mapped[str] = mapped_column(String(512))
    token: Mapped[str] = mapped_column(String(512))
    cluster: Mapped[str] = mapped_column(String(63), default="default", index=True)
    status: Mapped[str] = mapped_column(String(16), default="connecting")
    state: Mapped[str] = mapped_column(String(16), default="enabled")
    iommu_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    iommu_ready: Mapped[bool] = mapped_column(Boolean, default=False)
    hostname: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cpu_threads: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    # [{"id", "cpus", "memory_mib"}] as the agent reports them (hostplane.core.numa)
    numa_nodes: Mapped[list] = mapped_column(JSON, default=list)
    boot_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    generation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    etag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    poll_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    poll_lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Bumped in every transaction that changes what the scheduler sees of this host, its
    # devices or its VMs (controller.db.revisions); snapshot caches compare it.
    revision: Mapped[int] = mapped_column(BigInteger, default=first_revision)


class Device(Base):
    __tablename__ = "devices"
    # a device pool's members and a tenant's pool use are read by model
    __table_args__ = (Index("ix_devices_model", "vendor_id", "product_id"),)

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"),
                                         primary_key=True)
    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(32), index=True)
    vendor_id: Mapped[str] = mapped_column(String(4))
    product_id: Mapped[str] = mapped_column(String(4))
    name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="enabled")
    status: Mapped[str] = mapped_column(String(16), default="ready", index=True)
    vm: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    assignable: Mapped[bool] = mapped_column(Boolean, default=True)
    iommu_group: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # what device pools match on besides the model (PCI only; physfn: a VF's PF address)
    subsystem_vendor_id: Mapped[str | None] = mapped_column(String(4), nullable=True)
    subsystem_device_id: Mapped[str | None] = mapped_column(String(4), nullable=True)
    physfn: Mapped[str | None] = mapped_column(String(160), nullable=True)
    usb_major: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reported_vm: Mapped[str | None] = mapped_column(String(63), nullable=True)
    unavailable_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Why the agent will not pass it through (None when assignable), and where it sits:
    # NUMA node, PCI functions above it (root port first), PCIe link speed/width.
    not_assignable_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    numa_node: Mapped[int | None] = mapped_column(Integer, nullable=True)
    upstream: Mapped[list] = mapped_column(JSON, default=list)
    link: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    facts: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)


class Vm(Base):
    __tablename__ = "vms"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"),
                                                nullable=True, index=True)
    tenant: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="creating")
    anti_affinity_group: Mapped[str | None] = mapped_column(String(63), nullable=True)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    # The host a stopped VM is being moved to: its room there is reserved until the move
    # ends (host_id becomes this) or is undone (this becomes None).
    moving_to: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # The create operation that made its domain (recorded in the domain's metadata on
    # the agent), and since when the operation under way has been with an agent.
    op_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    op_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# --- host revisions --------------------------------------------------------------------
# What the scheduler reads of a host; other columns (last_seen, leases, errors) change on
# every poll and must not invalidate cached snapshots.
SCHEDULED_HOST_COLUMNS = ("cluster", "status", "state", "iommu_enabled", "iommu_ready",
                          "cpu_threads", "memory_mib", "numa_nodes")
# What a VM row's placement counts (controller.placement_views.vm_view): a VM holds its
# room whatever its state, so a create settling (state, op_since) changes no snapshot.
SCHEDULED_VM_COLUMNS = ("host_id", "moving_to", "vcpus", "memory_mib", "tenant",
                        "anti_affinity_group", "spec")


@event.listens_for(Session, "before_flush")
def _bump_host_revisions(session, _context, _instances):
    """Bump `revision` of every host whose scheduling view this flush changes.

    Before the flush, so that the host row is locked before its device rows, in the same
    order a claim takes them (no deadlock on PostgreSQL). Once per host and transaction:
    a snapshot never sees a transaction half done, so a second bump tells it nothing.
    Writes that bypass the ORM (`update(Device)...`, the claim) call `bump_revisions`
    themselves, or `bumped` after a statement of their own that bumps.
    """
    touched = set()
    for row in session.new | session.dirty | session.deleted:
        if isinstance(row, Host):
            if row in session.dirty and _changed(row, SCHEDULED_HOST_COLUMNS):
                touched.add(row.id)
        elif isinstance(row, Vm) and row in session.dirty and not _changed(
                row, SCHEDULED_VM_COLUMNS):
            continue
        elif isinstance(row, (Device, Vm)):
            for column in ("host_id", "moving_to") if isinstance(row, Vm) else ("host_id",):
                history = attributes.get_history(row, column)
                touched.update(history.added or history.unchanged or ())
                touched.update(history.deleted or ())
    bump_revisions(session, touched)


def bump_revisions(session, host_ids):
    """Bump the revision of `host_ids` once in this transaction (the flush above, and
    writes that bypass the ORM, call it)."""
    wanted = set(host_ids) - session.info.get("revisions_bumped_hosts", set()) - {None}
    if wanted:
        bumped(session, wanted)
        session.connection().execute(_BUMP, {"host_ids": sorted(wanted)})


def bumped(session, host_ids):
    """Note that this transaction bumped the revision of `host_ids` (by `_BUMP`, or a
    statement of its own), so that it bumps them no more."""
    session.info.setdefault("revisions_bumped_hosts", set()).update(host_ids)
    session.info["revisions_bumped"] = True   # snapshot caches look after the commit


# Built once: nearly every write runs it.
_BUMP = (update(Host.__table__)
         .where(Host.__table__.c.id.in_(bindparam("host_ids", expanding=True)))
         .values(revision=Host.__table__.c.revision + 1))


def _changed(row, columns):
    return any(attributes.get_history(row, column).has_changes() for column in columns)


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _new_transaction_bumps_again(session):
    session.info.pop("revisions_bumped_hosts", None)
