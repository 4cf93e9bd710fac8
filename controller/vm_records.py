"""The VM rows' own transactions, shared by the API (controller.vms), moves and the
poller's recovery: each locks its hosts, then the row, and checks the row is still the
operation it was asked about before it changes anything (hostplane.core.vm_states).

An operation is named by the create's `op_id`, which the agent records in the domain:
the row's name alone may have been deleted and taken again while an agent was silent.
"""

from sqlalchemy import bindparam, or_, select, update

from controller.db.models import Device, Vm, iso
from controller.claims import release_held
from hostplane.core import vm_states
from hostplane.errors import ApiError, Conflict, DependencyDown, NotFound

# What `render` shows of a device (a read for an answer loads no more).
RENDERED_DEVICE_FIELDS = ("host_id", "kind", "id", "type", "status")


def locked_vm(session, db, name):
    """The VM row locked for writing, after its hosts (the lock order of every writer);
    None when there is none."""
    found = session.execute(select(Vm.host_id, Vm.moving_to).where(Vm.name == name)).first()
    if found is not None:
        db.lock_hosts(session, found)
    return session.scalars(db.locked(select(Vm).where(Vm.name == name))).first()


def visible(vm, name, tenant):
    """`vm` when the caller may see it (`tenant`: its name, None for the admin); a VM of
    another tenant is a 404 like a missing one."""
    if vm is None or (tenant is not None and vm.tenant != tenant):
        raise NotFound(f"no VM {name}", code="vm_not_found")
    return vm


def settle_create(db, name, op_id, agent_state):
    """The agent made the VM of operation `op_id`: the row takes its state; its view.

    Only the VM row changes: its state is nothing a placement counts
    (models.SCHEDULED_VM_COLUMNS), so no host is locked or its revision bumped, and the
    change is one UPDATE on the condition vm_states.created checks, committed by itself
    (Database.single_statements). When it matches nothing, a transaction says why."""
    values = vm_states.created_values(agent_state)
    with db.single_statements() as connection:
        vm = connection.execute(_settle_statement(tuple(sorted(values))), {
            "vm_name": name, "vm_op_id": op_id, "from_states": sorted(vm_states.CREATED_FROM),
            **{f"new_{key}": value for key, value in values.items()}}).first()
        if vm is not None:
            return render(vm, connection.execute(_HELD, {"name": name}).all())
    return db.transaction(lambda session: _refuse_settle(session, db, name, op_id, agent_state))


def _refuse_settle(session, db, name, op_id, agent_state):
    vm = session.scalars(db.locked(select(Vm).where(Vm.name == name))).first()
    if vm is None or vm.op_id != op_id:
        raise Conflict(f"{name} was deleted while its create was under way", code="vm_gone")
    vm_states.created(vm, op_id, agent_state)   # raises IllegalVmTransition
    raise AssertionError(f"{name} settles from {vm.state}, yet its UPDATE matched nothing")


_VMS = Vm.__table__
_SETTLES = {}   # the columns a settle sets → its statement, built once


def _settle_statement(columns):
    """The settle's UPDATE of `columns` (what vm_states.created_values sets), on the
    condition settle_create and vm_states.created check together: the row of that
    operation id (None matches only a row from before operation ids), in a state it
    settles from."""
    statement = _SETTLES.get(columns)
    if statement is None:
        statement = _SETTLES.setdefault(columns, (
            update(_VMS)
            .where(_VMS.c.name == bindparam("vm_name"),
                   _VMS.c.op_id.is_not_distinct_from(bindparam("vm_op_id")),
                   _VMS.c.state.in_(bindparam("from_states", expanding=True)))
            .values({key: bindparam(f"new_{key}") for key in columns})
            .returning(*_VMS.c)))
    return statement


_HELD = (select(*(Device.__table__.c[column] for column in RENDERED_DEVICE_FIELDS))
         .where(Device.__table__.c.vm == bindparam("name")).order_by(Device.__table__.c.id))


def forget_create(db, name, op_id):
    """The create of `op_id` surely did not happen: its claim and row go (only if the row
    is still that create's: the name may have been taken again since)."""
    def undo(session):
        vm = locked_vm(session, db, name)
        if vm is None or vm.op_id != op_id or vm.state != vm_states.CREATING:
            return False
        release_held(session, db, name)
        session.delete(vm)
        return True
    return db.transaction(undo)


def delete_on_agent(agent, name, op_id):
    """Delete the domain of operation `op_id` (cancelling that create for good); a domain
    of that name made by another operation is not this VM's and stays (an orphan)."""
    try:
        agent.delete_vm(name, op_id)
    except ApiError as exc:
        if exc.code != "vm_changed":
            raise


def finish_delete(db, name, op_id, mark=None):
    """The agent has no domain of this VM any more: its claim and row go. With `mark`
    (the delete request's own), only if no other delete has taken it over since."""
    def drop(session):
        vm = locked_vm(session, db, name)
        if (vm is None or vm.op_id != op_id or vm.state != vm_states.DELETING
                or (mark is not None and vm.op_since != mark)):
            return False
        release_held(session, db, name)
        session.delete(vm)
        return True
    return db.transaction(drop)


def undo_delete(db, name, previous, mark):
    """The agent surely never got the delete of `mark`: the VM is as it was."""
    def undo(session):
        vm = locked_vm(session, db, name)
        if vm is not None and vm.state == vm_states.DELETING and vm.op_since == mark:
            vm_states.undo_delete(vm, previous)
    db.transaction(undo)


def pending_error(exc, name, state, operation):
    """The 503 of an operation the agent may have carried out without answering."""
    return DependencyDown(
        f"{exc.message}; it may still {operation} {name}, so {name} stays {state}, holding "
        "its devices, until the agent answers (the controller asks it again by itself)",
        code=exc.code, details={**exc.details, "vm": name, "state": state})


def expected_domains(session, host_id=None):
    """{(host_id, name): operation ids a domain there may carry} for every VM row (on
    `host_id` only, if given): its own host with its own operation, and the target of a
    move with the move's (None: any, from before operation ids or not yet known)."""
    query = select(Vm.name, Vm.host_id, Vm.moving_to, Vm.op_id, Vm.spec)
    if host_id is not None:
        query = query.where(or_(Vm.host_id == host_id, Vm.moving_to == host_id))
    expected = {}
    for name, host, moving_to, op_id, spec in session.execute(query):
        if host is not None:
            expected.setdefault((host, name), set()).add(op_id)
        if moving_to is not None:
            expected.setdefault((moving_to, name), set()).add((spec or {}).get("moving_op"))
    return expected


def held(session, name):
    """The devices `name` holds, as `render` shows them (plain rows of those columns)."""
    return session.connection().execute(_HELD, {"name": name}).all()


def render(vm, devices):
    return {"name": vm.name, "host": vm.host_id, "state": vm.state, "vcpus": vm.vcpus,
            "memory_mib": vm.memory_mib, "tenant": vm.tenant,
            "anti_affinity_group": vm.anti_affinity_group,
            "networks": (vm.spec or {}).get("networks", []),
            "numa": (vm.spec or {}).get("numa", "none"),
            "numa_node": (vm.spec or {}).get("numa_node"),
            "devices": [{"host_id": d.host_id, "kind": d.kind, "id": d.id, "type": d.type,
                         "status": d.status} for d in devices],
            "created_at": iso(vm.created_at)}
