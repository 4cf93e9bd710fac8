"""Domains on agents that the controller has no record of: listed, adopted or deleted.

A domain is an orphan when no VM row names it on its host with the operation that made
it (the id in its metadata): made with `virsh` behind the controller's back, left from
before operation ids existed, or a create the controller settled as never done while
an agent was cut off. The devices it holds are `attached` to no VM (controller.sync),
so they are never offered; an admin either adopts the domain as a VM (its devices are
then that VM's) or deletes it (its devices come back `ready` on the next fetch).
"""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from controller.agents import maybe_done
from controller.db.models import Device, Host, Vm
from controller.vm_records import (expected_domains, forget_create, pending_error,
                                   settle_create)
from hostplane.core import device_states, vm_states
from hostplane.core.pci import iommu_groups
from hostplane.errors import ApiError, Conflict, NotFound


def listing(ctl):
    """{"orphans": [...], "unreachable": {host_id: message}} over every registered host."""
    with ctl.db.read() as session:
        hosts = session.scalars(select(Host).order_by(Host.id)).all()
    answers = {}
    if hosts:
        workers = max(1, min(len(hosts), int(ctl.config["poll"]["concurrency"])))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="orphans") as pool:
            answers = dict(zip([h.id for h in hosts], pool.map(
                lambda host: _domains_of(ctl, host), hosts)))
    with ctl.db.read() as session:   # after the agents: see _orphan
        expected = expected_domains(session)
    orphans, unreachable = [], {}
    for host_id, domains in answers.items():
        if isinstance(domains, ApiError):
            unreachable[host_id] = domains.message
            continue
        for domain in domains:
            if not vm_states.domain_is_ours(domain.get("op_id"),
                                            expected.get((host_id, domain["name"]))):
                orphans.append(_render(host_id, domain, (host_id, domain["name"]) in expected))
    return {"orphans": orphans, "unreachable": unreachable}


def adopt(ctl, host_id, name, tenant=None):
    """Make the orphan `name` on `host_id` a VM of the controller, holding its devices.

    Like a create: the row is claimed first (`creating`, a new operation id), then the
    agent records that id in the domain if it still carries the one seen — so an adopt
    and an orphan delete (or a second adopt) racing for one domain never both win — and
    the row settles in the domain's state; an agent that does not answer leaves the row
    `creating` for the poller, as any create."""
    host, domain = _orphan(ctl, host_id, name)
    op_id = uuid.uuid4().hex

    def record(session):
        ctl.db.lock_hosts(session, [host.id])
        if session.get(Vm, name) is not None:
            raise Conflict(f"a VM named {name} already exists; delete the orphan instead, or "
                           "that VM first", code="name_taken")
        rows = []
        for item in domain.get("devices", []):
            row = session.scalars(ctl.db.locked(select(Device).where(
                Device.host_id == host.id, Device.id == item["id"]))).first()
            outside = row is not None and row.status == device_states.ATTACHED and (
                row.vm is None and row.reported_vm != name)
            if (row is None or row.status == device_states.UNAVAILABLE or row.vm is not None
                    or outside):
                why = ("not known to the controller yet" if row is None else
                       f"held by VM {row.vm}" if row.vm else
                       f"held by domain {row.reported_vm}" if outside else "unavailable")
                raise Conflict(f"{name} holds {item['id']}, which is {why}",
                               code="device_busy", details={"device": item["id"]})
            rows.append(row)
        _whole_groups(session, host.id, name, rows)
        vm = Vm(name=name, host_id=host.id, tenant=tenant, vcpus=domain.get("vcpus") or 1,
                memory_mib=domain.get("memory_mib") or 0,
                spec={"networks": [{"bridge": n["bridge"]} for n in domain.get("networks", [])
                                   if n.get("bridge")]})
        vm_states.begin_create(vm, op_id, time.time())
        session.add(vm)
        for row in rows:   # held outside already (synced since), or still shown free
            if row.status == device_states.ATTACHED:
                device_states.adopt(row, name)
            else:
                device_states.hold(row, name)
        session.flush()
    try:
        ctl.db.transaction(record)
    except IntegrityError:   # PostgreSQL: a create of that name committed meanwhile
        raise Conflict(f"a VM named {name} already exists", code="name_taken") from None
    try:
        claimed = ctl.agent(host).claim_domain(name, op_id, domain.get("op_id"))
    except ApiError as exc:
        if maybe_done(exc):
            raise pending_error(exc, name, vm_states.CREATING, "adopt") from None
        forget_create(ctl.db, name, op_id)
        raise
    view = settle_create(ctl.db, name, op_id, claimed.get("state"))
    ctl.poller.fetch_now(host.id, background=False)
    return view


def delete(ctl, host_id, name):
    """Delete the orphan `name` on `host_id` (never a VM the controller knows); the
    domain is claimed for this delete first, so a racing adopt cannot also win."""
    host, domain = _orphan(ctl, host_id, name)
    op_id, agent = uuid.uuid4().hex, ctl.agent(host)
    agent.claim_domain(name, op_id, domain.get("op_id"))
    agent.delete_vm(name, op_id)
    ctl.poller.fetch_now(host.id, background=False)


# --- helpers ---------------------------------------------------------------------------
def _whole_groups(session, host_id, name, rows):
    """409 unless the domain holds every endpoint of each IOMMU group it holds a member of:
    a VM's claim is whole groups (VFIO hands a group to one VM), so the controller would
    otherwise record what the domain does not hold, or offer what it cannot give."""
    held = {row.id for row in rows}
    groups = iommu_groups(row for row in rows if row.kind == "pci")
    if not groups:
        return
    offered = session.scalars(select(Device).where(
        Device.host_id == host_id, Device.kind == "pci", Device.assignable.is_(True),
        Device.status != device_states.UNAVAILABLE)).all()
    missing = sorted({row.id for number, members in iommu_groups(offered).items()
                      if number in groups for row in members} - held)
    if missing:
        raise Conflict(f"{name} holds part of an IOMMU group without {', '.join(missing)}; "
                       "attach them to it on the agent, or delete the orphan",
                       code="group_split", details={"missing": missing})


def _domains_of(ctl, host):
    try:
        return ctl.agent(host).list_vms()
    except ApiError as exc:
        return exc


def _orphan(ctl, host_id, name):
    """(host row, the agent's view of the domain), or 404/409 when it is no orphan.

    The agent first, the rows after: a domain whose operation id an adopt has just
    recorded is then seen together with that adopt's row (so it is no orphan), never
    with the rows from before it (which would make it one, with the adopt's id)."""
    with ctl.db.read() as session:
        host = session.get(Host, host_id)
    if host is None:
        raise NotFound(f"no host {host_id}", code="host_not_found")
    try:
        domain = ctl.agent(host).vm(name)
    except ApiError as exc:
        if exc.status == 404:
            raise NotFound(f"host {host_id} has no domain {name}", code="orphan_not_found",
                           details={"host": host_id}) from None
        raise
    with ctl.db.read() as session:
        expected = expected_domains(session, host_id).get((host_id, name))
    if vm_states.domain_is_ours(domain.get("op_id"), expected):
        raise Conflict(f"{name} on {host_id} is a VM the controller knows; use /v1/vms",
                       code="not_an_orphan", details={"host": host_id})
    return host, domain


def _render(host_id, domain, name_clash):
    return {"host_id": host_id, "name": domain["name"], "state": domain.get("state"),
            "op_id": domain.get("op_id"), "vcpus": domain.get("vcpus"),
            "memory_mib": domain.get("memory_mib"),
            "devices": [{"type": d["type"], "id": d["id"]} for d in domain.get("devices", [])],
            "name_clash": name_clash}
