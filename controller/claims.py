"""Claims and releases: the write side of placement, under the chosen host's row lock.

A claim takes the write lock of the chosen host — `BEGIN IMMEDIATE` on SQLite; on
PostgreSQL the host's row by the bump of its revision, then its device rows `FOR UPDATE` —
re-runs the scheduler on that host's rows as they are now, and flips the devices it picks
to `attached` (device_states) in the same transaction that records the VM (vm_states),
written as plain statements (controller.db.drafts). A release gives them back.
"""

from sqlalchemy import select

from controller.db.drafts import Draft, insert_row, update_rows
from controller.db.models import Device, Vm
from controller.pool_claims import check_pool_claim
from controller.placement_views import claim_snapshot
from hostplane.core import device_states, vm_states
from hostplane.core.scheduler import place
from hostplane.errors import Conflict

VMS, DEVICES = Vm.__table__, Device.__table__
DEVICE_KEY = ("host_id", "id")   # the primary key
CLAIMED_FIELDS = ("host_id", "id", "status", "state", "vm")   # what device_states.claim reads


def name_taken(request):
    """409 for a create of a name in use; a tenant is not told whose it is, or whether
    the name is used at all rather than merely unavailable."""
    if request.tenant is not None:
        return Conflict(f"the name {request.name} is not available; choose another",
                        code="name_taken")
    return Conflict(f"VM {request.name} already exists", code="name_taken")


class NoLongerFits(Exception):
    """The chosen host can no longer take the request: the claim's transaction is rolled
    back (it bumped the host's revision already) and the placement tried again."""


def claim_on(session, db, request, policy, host_id, new_vm, as_read=None):
    """(the scheduler's Candidate, the host row as locked here); raises NoLongerFits
    when the host can no longer take `request`; the VM row (`new_vm`) is inserted.
    `as_read`: the host as the snapshot cache read it (placement_views.claim_snapshot)."""
    session.info["held_claim"] = True   # held in the snapshot already (snapshot_cache)
    moving = request.existing_vm is not None and request.existing_vm.host_id != host_id
    if moving:   # both hosts' rows, in id order, as every writer takes them
        db.lock_hosts(session, {host_id, request.existing_vm.host_id})
    # the host's row first (the snapshot reads it locked), then its devices
    local, host = claim_snapshot(session, not db.is_sqlite, host_id, as_read)
    if moving:
        _reserve_move(session, db, request.existing_vm, host_id)
    elif request.existing_vm is not None:   # an attach: to the VM as the placement saw it
        _unchanged(_locked_vm(session, db, request.existing_vm), request.existing_vm)
    chosen = place(request, local, policy).chosen
    if chosen is None:
        raise NoLongerFits(host_id)
    if request.pools:   # pool rows locked, tenant quotas checked (controller.pool_claims)
        check_pool_claim(session, db, request, host_id, chosen.devices, local.index)
    # Written as plain statements, not through the ORM (controller.db.drafts): the host's
    # revision was bumped as it was locked (claim_snapshot); then the VM, then its devices.
    if new_vm is not None:
        fields = {key: value for key, value in new_vm.items() if key not in ("op_id", "op_since")}
        row = Draft({**fields, "host_id": host_id})
        # the policy judges devices added later; the node is counted (VmView.numa_node)
        row.spec = {**row.spec, "numa": request.numa}
        if chosen.numa_node is not None:
            row.spec["numa_node"] = chosen.numa_node
        vm_states.begin_create(row, new_vm["op_id"], new_vm["op_since"])
        insert_row(session, VMS, row)   # a name in use fails here (IntegrityError: name_taken)
    devices = [Draft({name: getattr(view, name) for name in CLAIMED_FIELDS})
               for view in (local.index.device(host_id, *key) for key in chosen.devices)]
    for device in devices:
        device_states.claim(device, request.name)
    # each row only if still ready: a device taken by a write that failed to bump the
    # host's revision would be a double claim if the host were taken as read
    if update_rows(session, DEVICES, devices, DEVICE_KEY + ("status",)) != len(devices):
        raise NoLongerFits(host_id)
    return chosen, host   # the host row too: its caller calls its agent with it


def _reserve_move(session, db, seen, target):
    """Count the VM on `target` too (`moving_to`) while it moves, if it is still the
    stopped, device-less VM the placement saw; a second move of it at once is refused."""
    vm = _locked_vm(session, db, seen)
    _unchanged(vm, seen, vm_states.STOPPED)
    vm_states.begin_move(vm, target)


def _locked_vm(session, db, seen):
    """The row of the existing VM a claim is for, locked (after its hosts and devices)."""
    vm = session.scalars(db.locked(select(Vm).where(Vm.name == seen.name))).first()
    if vm is None:
        raise Conflict(f"VM {seen.name} was deleted meanwhile", code="vm_gone")
    return vm


def _unchanged(vm, seen, state=None):
    """409 unless `vm` is still the VM the placement saw (the same create's row, the same
    tenant's: a name deleted and taken again is another VM), where it saw it, settled
    (in `state`, if given) and not moving: a claim for a VM being deleted or moved would
    hand it devices it cannot take."""
    if (vm.moving_to is not None or vm.host_id != seen.host_id
            or vm.state in vm_states.BUSY or (state and vm.state != state)):
        raise Conflict(f"{seen.name} changed meanwhile ({vm.state} on {vm.host_id}"
                       + (f", moving to {vm.moving_to}" if vm.moving_to else "") + ")",
                       code="vm_busy")
    if vm.op_id != seen.op_id or vm.tenant != seen.tenant:
        raise Conflict(f"VM {seen.name} was deleted meanwhile", code="vm_gone")


def release(db, host_id, vm_name, devices):
    """Give back what a failed attach reserved (the host's row locked first)."""
    def undo(session):
        db.lock_hosts(session, [host_id])
        for _kind, device_id in devices:
            row = session.scalars(db.locked(select(Device).where(
                Device.host_id == host_id, Device.id == device_id))).first()
            if row is not None and row.vm == vm_name and row.status == "attached":
                device_states.release(row, vm_name)
    db.transaction(undo)


def release_held(session, db, name, host_id=None):
    """Give back the devices `name` holds (on `host_id` only, if given); an unavailable one
    keeps its record for the operator but loses its holder. The caller has locked the
    hosts concerned (Database.lock_hosts) first."""
    query = select(Device).where(Device.vm == name)
    if host_id is not None:
        query = query.where(Device.host_id == host_id)
    for device in session.scalars(db.locked(query)):
        if device.status == device_states.ATTACHED:
            device_states.release(device, name)
        else:
            device_states.forget_holder(device)

