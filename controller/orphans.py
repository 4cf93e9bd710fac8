"""Domains on agents that the controller has no record of: listed, adopted or deleted.

A domain is an orphan when no VM row names it on its host with the operation that made
it (the id in its metadata): made with `virsh` behind the controller's back, left from
before operation ids existed, or a create the controller settled as never done while
an agent was cut off. The devices it holds are `attached` to no VM (controller.sync),
so they are never offered; an admin either adopts the domain as a VM (its devices are
then that VM's) or deletes it (its devices come back `ready` on the next fetch).
"""

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from controller.db.models import Device, Host, Vm
from controller.moves import target_op
from controller.vm_records import held, render
from hostplane.core import device_states, vm_states
from hostplane.errors import ApiError, Conflict, NotFound


def listing(ctl):
    """{"orphans": [...], "unreachable": {host_id: message}} over every registered host."""
    with ctl.db.read() as session:
        hosts = session.scalars(select(Host).order_by(Host.id)).all()
        expected = _expected_domains(session)
    answers = {}
    if hosts:
        workers = max(1, min(len(hosts), int(ctl.config["poll"]["concurrency"])))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="orphans") as pool:
            answers = dict(zip([h.id for h in hosts], pool.map(
                lambda host: _domains_of(ctl, host), hosts)))
    orphans, unreachable = [], {}
    for host_id, domains in answers.items():
        if isinstance(domains, ApiError):
            unreachable[host_id] = domains.message
            continue
        for domain in domains:
            if _is_orphan(domain, expected.get((host_id, domain["name"]))):
                orphans.append(_render(host_id, domain, (host_id, domain["name"]) in expected))
    return {"orphans": orphans, "unreachable": unreachable}


def adopt(ctl, host_id, name, tenant=None):
    """Make the orphan `name` on `host_id` a VM of the controller, holding its devices."""
    host, domain = _orphan(ctl, host_id, name)

    def record(session):
        ctl.db.lock_hosts(session, [host.id])
        if session.get(Vm, name) is not None:
            raise Conflict(f"a VM named {name} already exists; delete the orphan instead, or "
                           "that VM first", code="name_taken")
        rows = []
        for item in domain.get("devices", []):
            row = session.scalars(ctl.db.locked(select(Device).where(
                Device.host_id == host.id, Device.id == item["id"]))).first()
            if row is None or row.status == device_states.UNAVAILABLE or row.vm is not None:
                why = ("not known to the controller yet" if row is None else
                       f"held by VM {row.vm}" if row.vm else "unavailable")
                raise Conflict(f"{name} holds {item['id']}, which is {why}",
                               code="device_busy", details={"device": item["id"]})
            rows.append(row)
        vm = Vm(name=name, host_id=host.id, tenant=tenant, vcpus=domain.get("vcpus") or 1,
                memory_mib=domain.get("memory_mib") or 0,
                spec={"networks": [{"bridge": n["bridge"]} for n in domain.get("networks", [])
                                   if n.get("bridge")]})
        vm_states.adopted(vm, domain.get("op_id"), domain.get("state"))
        session.add(vm)
        for row in rows:
            if row.status == device_states.READY:
                device_states.hold(row, name)
            else:
                device_states.adopt(row, name)
        session.flush()
        return render(vm, held(session, name))
    try:
        view = ctl.db.transaction(record)
    except IntegrityError:   # PostgreSQL: a create of that name committed meanwhile
        raise Conflict(f"a VM named {name} already exists", code="name_taken") from None
    ctl.poller.fetch_now(host.id, background=False)
    return view


def delete(ctl, host_id, name):
    """Delete the orphan `name` on `host_id` (never a VM the controller knows)."""
    host, domain = _orphan(ctl, host_id, name)
    ctl.agent(host).delete_vm(name, domain.get("op_id"))
    ctl.poller.fetch_now(host.id, background=False)


# --- helpers ---------------------------------------------------------------------------
def _expected_domains(session):
    """{(host_id, name): operation ids a domain there may carry} for every VM row: its
    own host with its own operation, and the target of a move with the move's."""
    expected = {}
    for vm in session.scalars(select(Vm)):
        if vm.host_id is not None:
            expected.setdefault((vm.host_id, vm.name), set()).add(vm.op_id)
        if vm.moving_to is not None:
            expected.setdefault((vm.moving_to, vm.name), set()).add(target_op(vm.spec))
    return expected


def _is_orphan(domain, ops):
    """No row names it here, or the row's operation is another (None: any, from before
    operation ids; a move not yet defined on its target expects any too)."""
    if ops is None:
        return True
    return None not in ops and domain.get("op_id") not in ops


def _domains_of(ctl, host):
    try:
        return ctl.agent(host).list_vms()
    except ApiError as exc:
        return exc


def _orphan(ctl, host_id, name):
    """(host row, the agent's view of the domain), or 404/409 when it is no orphan."""
    with ctl.db.read() as session:
        host = session.get(Host, host_id)
        expected = _expected_domains(session).get((host_id, name)) if host else None
    if host is None:
        raise NotFound(f"no host {host_id}", code="host_not_found")
    try:
        domain = ctl.agent(host).vm(name)
    except ApiError as exc:
        if exc.status == 404:
            raise NotFound(f"host {host_id} has no domain {name}", code="orphan_not_found",
                           details={"host": host_id}) from None
        raise
    if not _is_orphan(domain, expected):
        raise Conflict(f"{name} on {host_id} is a VM the controller knows; use /v1/vms",
                       code="not_an_orphan", details={"host": host_id})
    return host, domain


def _render(host_id, domain, name_clash):
    return {"host_id": host_id, "name": domain["name"], "state": domain.get("state"),
            "op_id": domain.get("op_id"), "vcpus": domain.get("vcpus"),
            "memory_mib": domain.get("memory_mib"),
            "devices": [{"type": d["type"], "id": d["id"]} for d in domain.get("devices", [])],
            "name_clash": name_clash}
