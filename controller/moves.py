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
"""

import logging

from controller.db.models import Vm
from controller.placement import release
from hostplane.errors import ApiError, Conflict

log = logging.getLogger(__name__)


def move_and_attach(ctl, vm, target_id, devices, host_of):
    """Finish the move of stopped `vm` to host `target_id`, where the claim is made;
    `host_of(host_id)` is the host row (or a 409 when it is gone)."""
    try:
        source, target = host_of(vm.host_id), host_of(target_id)
        _check_movable(ctl.agent(source).vm(vm.name), vm.name, source.id)
        spec = {"name": vm.name, "vcpus": vm.vcpus, "memory_mib": vm.memory_mib,
                "networks": (vm.spec or {}).get("networks", []), "start": False,
                "devices": [{"type": kind, "id": device_id} for kind, device_id in devices]}
        answer = ctl.agent(target).create_vm(spec)
    except ApiError:
        _undo(ctl, vm, target_id, devices)
        raise
    try:
        ctl.agent(source).delete_vm(vm.name)
    except ApiError:
        _forget_on(ctl, target, vm.name)
        _undo(ctl, vm, target.id, devices)
        raise
    with ctl.db.write() as session:
        row = session.get(Vm, vm.name)
        row.host_id, row.moving_to = target.id, None
        row.state = answer.get("state") or "stopped"
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


def _undo(ctl, vm, target_id, devices):
    """The VM back to its source as it was; the claim on the target given back."""
    release(ctl.db, target_id, vm.name, devices)
    with ctl.db.write() as session:
        row = session.get(Vm, vm.name)
        if row is not None and row.moving_to == target_id:
            row.moving_to, row.state = None, vm.state


def _forget_on(ctl, host, name):
    try:
        ctl.agent(host).delete_vm(name)
    except ApiError as exc:   # the poller's recovery finds it later; the answer is the 503
        log.warning("VM %s: could not undo its definition on %s: %s", name, host.id,
                    exc.message)
