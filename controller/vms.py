"""VM lifecycle as the controller sees it: claim first, then ask the agent, settle by its answer.

The reservation (the VM row with its host, vCPUs and memory, and its devices `attached`)
is what the scheduler counts; it lasts from the claim until the VM's delete is
confirmed, so a stopped VM keeps its GPUs and its room. Only the VM's host's agent is
ever called. States change only through hostplane.core.vm_states.

A create or delete the agent may have carried out without answering (a timeout, a
reset, a 5xx) is never taken as failed: the VM stays `creating` or `deleting`, holding
its devices, and controller.recovery asks the agent later by the create's operation id
(recorded in the domain's metadata) and finishes or undoes it. Only a refusal the agent
surely answered (4xx), or a connection it never accepted, is undone at once.
"""

import time
import uuid

from sqlalchemy import select

from controller.agents import maybe_done, vm_spec
from controller.claims import release
from controller.db.models import Device, Host, Vm
from controller.moves import move_and_attach
from controller.placement import place_and_claim
from controller.pools import placed_from_pools
from controller.placement_views import existing_vm_view
from controller.vm_records import (delete_on_agent, finish_delete, forget_create, held,
                                   locked_vm, pending_error, render, settle_create,
                                   undo_delete, visible)
from controller.services import current, tenant
from hostplane.core import vm_states
from hostplane.core.pci import group_siblings
from hostplane.core.scheduler import PlacementRequest
from hostplane.errors import ApiError, Conflict, NotFound


def create(body):
    ctl = current()
    op_id = uuid.uuid4().hex
    spec = {"networks": [n.model_dump() for n in body.networks], "start": body.start}
    new_vm = {"name": body.name, "tenant": tenant(), "vcpus": body.vcpus,
              "memory_mib": body.memory_mib, "anti_affinity_group": body.anti_affinity_group,
              "spec": spec, "op_id": op_id, "op_since": time.time()}
    # the host as the claim locked it: a host deleted since then fails the agent call
    host, devices, numa_node = placed_from_pools(body.devices, lambda pools: place_and_claim(
        ctl.db, body.placement(tenant(), ctl.strategy, pools), ctl.policy, new_vm,
        ctl.config["scheduler"]["claim_attempts"]))
    agent_spec = vm_spec(body.name, body.vcpus, body.memory_mib, spec["networks"], devices,
                         op_id, start=body.start, numa_node=numa_node)
    try:
        answer = ctl.agent(host).create_vm(agent_spec)
    except ApiError as exc:
        if not maybe_done(exc):
            forget_create(ctl.db, body.name, op_id)
            raise   # a tenant reads it redacted (controller.app, refusals.error_for)
        raise pending_error(exc, body.name, "creating", "create") from None
    return settle_create(ctl.db, body.name, op_id, answer.get("state"))


def get(name):
    with current().db.read() as session:
        vm = _visible(session, name)
        return render(vm, held(session, name))


def listing():
    with current().db.read() as session:
        query = select(Vm).order_by(Vm.name)
        if tenant() is not None:
            query = query.where(Vm.tenant == tenant())
        vms = session.scalars(query).all()
        holding = {}
        for device in session.scalars(select(Device).where(Device.vm.is_not(None))):
            holding.setdefault(device.vm, []).append(device)
        return [render(vm, holding.get(vm.name, [])) for vm in vms]


def start(name):
    vm = _lookup(name, "start")
    answer = current().agent(_host(vm.host_id)).start_vm(name)
    return _set_state(name, answer.get("state") or "running")


def stop(name, force):
    vm = _lookup(name, "stop")
    answer = current().agent(_host(vm.host_id)).stop_vm(name, force)
    return _set_state(name, answer.get("state") or "stopped")


def delete(name):
    """One delete wins (the row turns `deleting` under its lock); the agent is asked,
    then the reservation goes. An agent that never got the request leaves the VM as it
    was (503); one that may have acted without answering leaves it `deleting`, and the
    poller finishes the delete when the agent answers."""
    ctl = current()
    stale_before = time.time() - ctl.agent_call_s()

    def begin(session):
        vm = visible(locked_vm(session, ctl.db, name), name, tenant())
        previous = vm.state
        vm_states.begin_delete(vm, (vm.op_since or 0) < stale_before, time.time())
        return vm.host_id, vm.op_id, previous, vm.op_since
    host_id, op_id, previous, mine = ctl.db.transaction(begin)
    host = _host_or_none(host_id)
    if host is not None:
        try:
            delete_on_agent(ctl.agent(host), name, op_id)
        except ApiError as exc:
            if maybe_done(exc):
                raise pending_error(exc, name, "deleting", "delete") from None
            undo_delete(ctl.db, name, previous, mine)
            raise
    if not finish_delete(ctl.db, name, op_id, mine):
        raise NotFound(f"no VM {name}: another delete took this one over and finished it",
                       code="vm_not_found")


def add_devices(name, body):
    """Claim on the VM's host, then attach one by one; a stopped VM holding nothing may
    instead be moved to the host of the USB it asks for (controller.moves)."""
    ctl = current()
    vm = _lookup(name, "attach")

    def claim(pools):
        request = PlacementRequest(name=name, vcpus=vm.vcpus, memory_mib=vm.memory_mib,
                                   gpus=[gpu.ask() for gpu in body.gpus],
                                   usb=[usb.id for usb in body.usb], tenant=tenant(),
                                   pools=pools, anti_affinity_group=vm.anti_affinity_group,
                                   strategy=ctl.strategy, existing_vm=existing_vm_view(vm),
                                   numa=(vm.spec or {}).get("numa", "none"))
        return place_and_claim(ctl.db, request, ctl.policy, None,
                               ctl.config["scheduler"]["claim_attempts"])
    host, devices, _numa_node = placed_from_pools(body.devices, claim)
    host_id = host.id
    if host_id != vm.host_id:   # stopped, device-less, asked for USB elsewhere: it moves
        move_and_attach(ctl, vm, host_id, devices, _host)
        return get(name)
    agent, done = ctl.agent(host), []
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
    vm = _lookup(name, "detach")
    with current().db.read() as session:
        device = session.get(Device, (host_id, device_id))
        if device is None or device.vm != name:
            raise NotFound(f"{name} holds no device {device_id} on {host_id}",
                           code="device_not_found")
        group = [device]
        if device.kind == "pci":
            group += group_siblings(device, session.scalars(select(Device).where(
                Device.host_id == host_id, Device.vm == name, Device.kind == "pci")).all())
    agent = current().agent(_host(vm.host_id))
    for member in group:
        agent.detach(name, member.id)
    release(current().db, host_id, name, [(m.kind, m.id) for m in group
                                          if m.status == "attached"])
    return get(name)


# --- helpers ---------------------------------------------------------------------------
def _lookup(name, doing):
    """The caller's VM; 409 `vm_busy` while an operation is with an agent."""
    with current().db.read() as session:
        vm = _visible(session, name)
    vm_states.require_settled(vm, doing)
    return vm


def _visible(session, name):
    return visible(session.get(Vm, name), name, tenant())


def _host(host_id):
    host = _host_or_none(host_id)
    if host is None:
        raise Conflict("the VM's host is no longer registered", code="host_gone")
    return host


def _host_or_none(host_id):
    with current().db.read() as session:
        return session.get(Host, host_id) if host_id else None


def _set_state(name, state):
    """What the agent answered to a start or stop (a VM deleted meanwhile: 404)."""
    db = current().db

    def record(session):
        vm = visible(locked_vm(session, db, name), name, tenant())
        vm_states.report(vm, state)
        return render(vm, held(session, name))
    return db.transaction(record)
