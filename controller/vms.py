"""VM lifecycle as the controller sees it: claim first, then ask the agent, undo on failure.

The reservation (the VM row with its host, vCPUs and memory, and its devices `attached`)
is what the scheduler counts; it lasts from the claim until the VM is deleted, so a
stopped VM keeps its GPUs and its room. Only the VM's host's agent is ever called.
"""

from sqlalchemy import select

from controller.db.models import Device, Host, Vm
from controller.moves import move_and_attach
from controller.placement import place_and_claim, release, release_held, vm_view
from controller.services import current, tenant
from hostplane.core.scheduler import PlacementRequest
from hostplane.errors import ApiError, Conflict, NotFound


def create(body):
    ctl = current()
    request = body.placement(tenant())
    spec = {"networks": [n.model_dump() for n in body.networks], "start": body.start}
    new_vm = {"name": body.name, "tenant": request.tenant, "vcpus": body.vcpus,
              "memory_mib": body.memory_mib, "anti_affinity_group": body.anti_affinity_group,
              "state": "creating", "spec": spec}
    host_id, devices = place_and_claim(ctl.db, request, ctl.policy, new_vm,
                                       ctl.config["scheduler"]["claim_attempts"])
    agent_spec = {"name": body.name, "vcpus": body.vcpus, "memory_mib": body.memory_mib,
                  "networks": spec["networks"], "start": body.start,
                  "devices": [{"type": kind, "id": device_id} for kind, device_id in devices]}
    try:
        answer = ctl.agent(_host(host_id)).create_vm(agent_spec)
    except ApiError:
        release(ctl.db, host_id, body.name, devices, drop_vm=True)
        raise
    return _set_state(body.name, answer.get("state") or ("running" if body.start else "stopped"))


def get(name):
    with current().db.read() as session:
        vm = _visible(session, name)
        return _render(vm, _held(session, name))


def listing():
    with current().db.read() as session:
        query = select(Vm).order_by(Vm.name)
        if tenant() is not None:
            query = query.where(Vm.tenant == tenant())
        vms = session.scalars(query).all()
        held = {}
        for device in session.scalars(select(Device).where(Device.vm.is_not(None))):
            held.setdefault(device.vm, []).append(device)
        return [_render(vm, held.get(vm.name, [])) for vm in vms]


def start(name):
    vm = _lookup(name)
    answer = current().agent(_host(vm.host_id)).start_vm(name)
    return _set_state(name, answer.get("state") or "running")


def stop(name, force):
    vm = _lookup(name)
    answer = current().agent(_host(vm.host_id)).stop_vm(name, force)
    return _set_state(name, answer.get("state") or "stopped")


def delete(name):
    """Agent first (503 leaves everything as it was), then the reservation goes."""
    vm = _lookup(name)
    if vm.host_id is not None:
        current().agent(_host(vm.host_id)).delete_vm(name)
    db = current().db
    with db.write() as session:
        release_held(session, db, name)
        row = session.get(Vm, name)
        if row is not None:
            session.delete(row)


def add_devices(name, body):
    """Claim on the VM's host, then attach one by one; a stopped VM holding nothing may
    instead be moved to the host of the USB it asks for (controller.moves)."""
    ctl = current()
    vm = _lookup(name)
    request = PlacementRequest(name=name, vcpus=vm.vcpus, memory_mib=vm.memory_mib,
                               gpus=[gpu.ask() for gpu in body.gpus],
                               usb=[usb.id for usb in body.usb], tenant=tenant(),
                               anti_affinity_group=vm.anti_affinity_group,
                               existing_vm=vm_view(vm))
    host_id, devices = place_and_claim(ctl.db, request, ctl.policy, None,
                                       ctl.config["scheduler"]["claim_attempts"])
    if host_id != vm.host_id:   # stopped, device-less, asked for USB elsewhere: it moves
        move_and_attach(ctl, vm, host_id, devices, _host)
        return get(name)
    agent, done = ctl.agent(_host(host_id)), []
    try:
        for kind, device_id in devices:
            agent.attach(name, kind, device_id)
            done.append((kind, device_id))
    except ApiError:
        for kind, device_id in done:
            agent.detach(name, device_id)
        release(ctl.db, host_id, name, devices)
        raise
    return get(name)


def remove_device(name, host_id, device_id):
    """Detach the device and the other functions claimed with it (its IOMMU group)."""
    vm = _lookup(name)
    with current().db.read() as session:
        device = session.get(Device, (host_id, device_id))
        if device is None or device.vm != name:
            raise NotFound(f"{name} holds no device {device_id} on {host_id}",
                           code="device_not_found")
        group = [device]
        if device.kind == "pci" and device.iommu_group is not None:
            group += session.scalars(select(Device).where(
                Device.host_id == host_id, Device.vm == name, Device.kind == "pci",
                Device.iommu_group == device.iommu_group, Device.id != device_id)).all()
    agent = current().agent(_host(vm.host_id))
    for member in group:
        agent.detach(name, member.id)
    release(current().db, host_id, name, [(m.kind, m.id) for m in group
                                          if m.status == "attached"])
    return get(name)


# --- helpers ---------------------------------------------------------------------------
def _lookup(name):
    """The caller's VM; 409 while it moves to another host (controller.moves)."""
    with current().db.read() as session:
        vm = _visible(session, name)
    if vm.moving_to is not None:
        raise Conflict(f"{name} is moving from {vm.host_id} to {vm.moving_to}; try again "
                       "in a moment", code="vm_busy", details={"host": vm.moving_to})
    return vm


def _visible(session, name):
    vm = session.get(Vm, name)
    if vm is None or (tenant() is not None and vm.tenant != tenant()):
        raise NotFound(f"no VM {name}", code="vm_not_found")
    return vm


def _host(host_id):
    with current().db.read() as session:
        host = session.get(Host, host_id) if host_id else None
    if host is None:
        raise Conflict("the VM's host is no longer registered", code="host_gone")
    return host


def _held(session, name):
    return session.scalars(select(Device).where(Device.vm == name).order_by(Device.id)).all()


def _set_state(name, state):
    with current().db.write() as session:
        vm = session.get(Vm, name)
        vm.state = state
        return _render(vm, _held(session, name))


def _render(vm, devices):
    return {"name": vm.name, "host": vm.host_id, "state": vm.state, "vcpus": vm.vcpus,
            "memory_mib": vm.memory_mib, "tenant": vm.tenant,
            "anti_affinity_group": vm.anti_affinity_group,
            "networks": (vm.spec or {}).get("networks", []),
            "devices": [{"host_id": d.host_id, "kind": d.kind, "id": d.id, "type": d.type,
                         "status": d.status} for d in devices],
            "created_at": vm.created_at.isoformat() if vm.created_at else None}
