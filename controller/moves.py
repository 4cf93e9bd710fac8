"""Moving a stopped VM to the host of the USB device it asks for (the product rule).

A stopped VM that holds no device may take USB from any host of its cluster, and then runs
there. The placement claim has already reserved the USB and the VM's room on the target
(`Vm.moving_to`, so it counts on both hosts meanwhile). Then, in this order, each step
undone if a later one fails, so the VM stays where it was and the claim goes back:

1. the source agent confirms the domain is stopped and has nothing that cannot move
   (disk files, passthrough devices the controller does not know of);
2. the target agent defines the same VM, with the USB in its definition;
3. the source agent undefines it (disk files are never deleted: `delete_storage` stays off);
4. the VM row takes the target as its host.

An agent that cannot be reached is a 503; an agent's refusal passes through with its code.
An agent that may have acted without answering (a timeout) leaves the VM `moving`: the
poller's recovery asks both agents and ends the move the way they say it went.

Before each agent call the move stamps the row (`spec["moving_since"]`): a move whose stamp
is older than the longest one call may wait was abandoned by a dead controller process,
and controller.recovery settles it with `settle()`, the same ending the move uses.
"""

import logging
import uuid

from sqlalchemy import select

from controller.agents import maybe_done, vm_spec
from controller.db.models import Vm, utcnow
from controller.claims import release_held
from controller.vm_records import delete_on_agent, locked_vm, pending_error
from hostplane.core import vm_states
from hostplane.errors import ApiError, Conflict

log = logging.getLogger(__name__)


def move_and_attach(ctl, vm, target_id, devices, host_of):
    """Finish the move of stopped `vm` to host `target_id`, where the claim is made;
    `host_of(host_id)` is the host row (or a 409 when it is gone)."""
    op_id = uuid.uuid4().hex   # the domain on the target is a new incarnation
    try:
        source, target = host_of(vm.host_id), host_of(target_id)
        _check_movable(ctl.agent(source).vm(vm.name), vm.name, source.id)
        mark(ctl.db, vm.name, target.id, op_id)
    except ApiError:
        settle(ctl.db, vm.name, target_id, moved=False, state=vm.state)
        raise
    spec = vm_spec(vm.name, vm.vcpus, vm.memory_mib, (vm.spec or {}).get("networks", []),
                   devices, op_id, start=False)
    for step in ("define", "undefine"):
        try:
            if step == "define":
                answer = ctl.agent(target).create_vm(spec)
            else:
                mark(ctl.db, vm.name, target.id)   # settled meanwhile: the source keeps it
                ctl.agent(source).delete_vm(vm.name, vm.op_id)
        except ApiError as exc:
            if maybe_done(exc):   # only the agents know now: recovery asks them both
                raise pending_error(exc, vm.name, vm_states.MOVING, "move") from None
            if step == "undefine":
                _forget_on(ctl, target, vm.name, op_id)
            settle(ctl.db, vm.name, target.id, moved=False, state=vm.state)
            raise
    if not settle(ctl.db, vm.name, target.id, moved=True,
                  state=answer.get("state") or "stopped"):
        raise Conflict(f"{vm.name}: its move was settled by another controller process",
                       code="vm_busy", details={"host": target.id})
    log.info("VM %s moved from %s to %s for %s", vm.name, source.id, target.id,
             ", ".join(device_id for _, device_id in devices))


def _check_movable(view, name, source_id):
    """409 for a domain that is not stopped, or that holds what its agent cannot rebuild."""
    if view.get("state") != "stopped":
        raise Conflict(f"{name} is {view.get('state')} on {source_id}; only a stopped VM may "
                       "move to its USB device", code="vm_not_stopped",
                       details={"host": source_id, "state": view.get("state")})
    if view.get("disks"):
        raise Conflict(f"{name} has disk files on {source_id} that another host cannot open; "
                       "it stays there", code="vm_has_local_disks",
                       details={"host": source_id,
                                "disks": [d.get("path") for d in view["disks"]]})
    if view.get("devices"):
        raise Conflict(f"{name} holds passthrough devices on {source_id}; all of a VM's "
                       "devices sit on one host", code="vm_holds_devices",
                       details={"host": source_id})


def mark(db, name, target_id, op_id=None):
    """Stamp the move as alive now (and record the target's operation id, when given);
    409 once it is no longer this move (settled elsewhere)."""
    with db.write() as session:   # hosts first, then the row (its spec bumps them)
        vm = locked_vm(session, db, name)
        if vm is None or vm.state != "moving" or vm.moving_to != target_id:
            raise Conflict(f"{name} is no longer moving to {target_id}", code="vm_busy",
                           details={"host": target_id})
        stamp = {"moving_since": utcnow().timestamp()}
        if op_id:
            stamp["moving_op"] = op_id
        vm.spec = {**(vm.spec or {}), **stamp}


def settle(db, name, target_id, moved, state):
    """End the move of `name` to `target_id`: `moved` → the target is its host; otherwise
    it stays on its source and the target's claim (devices, room) is given back. One
    transaction, hosts locked in id order then the VM row (as a claim takes them); False
    when the row is no longer this move (another process settled it)."""
    def end(session):
        source_id = session.scalar(select(Vm.host_id).where(Vm.name == name))
        db.lock_hosts(session, {target_id, source_id})
        vm = session.scalars(db.locked(select(Vm).where(Vm.name == name))).first()
        if vm is None or vm.state != vm_states.MOVING or vm.moving_to != target_id:
            return moved and vm is not None and vm.host_id == target_id
        spec = dict(vm.spec or {})
        spec.pop("moving_since", None)
        target_op = spec.pop("moving_op", None)
        if moved:
            vm_states.arrive(vm, target_op)
        else:
            release_held(session, db, name, target_id)
        vm_states.end_move(vm, state)
        vm.spec = spec
        return True
    return db.transaction(end)


def target_op(vm_spec):
    """The operation id of the domain a move defines on its target (None: not yet)."""
    return (vm_spec or {}).get("moving_op")


def _forget_on(ctl, host, name, op_id):
    """Undefine (and cancel) the target's copy of operation `op_id`, if it was made."""
    try:
        delete_on_agent(ctl.agent(host), name, op_id)
    except ApiError as exc:   # the poller's recovery finds it later; the answer is the 503
        log.warning("VM %s: could not undo its definition on %s: %s", name, host.id,
                    exc.message)
