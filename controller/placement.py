"""Place, then claim atomically: the bridge between the pure scheduler and the database.

Placement runs on a lock-free snapshot, cached per process and refreshed host by host
(controller.snapshot_cache): fast, and wrong only when another request wins the race. The claim then takes the write lock of the chosen host — `BEGIN IMMEDIATE` on
SQLite, `SELECT ... FOR UPDATE` of the host and device rows on PostgreSQL — re-runs the
same scheduler on that host's rows as they are now, and flips the devices it picks to
`attached` in the same transaction that records the VM. A lost race retries placement;
capacity and devices are reserved before the agent is called and given back if it fails.
"""

import re

from flask import current_app, has_app_context
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from controller.db.models import Device, Host, Vm
from hostplane.core import device_states, vm_states
from hostplane.core.scheduler import (DeviceView, HostView, Policy, Snapshot, VmView,
                                      place)
from hostplane.errors import Conflict, Unplaceable
from hostplane.metrics import counter

# Kind of a refusal reason, by the first phrase found in it (reasons are sentences).
REASON_KINDS = (("not enough CPU", "cpu"), ("not enough memory", "memory"),
                ("use would be", "strategy"), ("anti-affinity", "anti_affinity"),
                (" is running on ", "vm_pinned"), (" holds devices on ", "vm_pinned"),
                (" is defined on ", "vm_pinned"), ("may move only", "vm_pinned"),
                ("requested host", "request"), ("not in cluster", "request"),
                ("USB", "usb"), ("IOMMU", "iommu"), ("GPU", "gpu"), ("PCI", "gpu"),
                ("connect", "host_status"), ("disabled", "host_state"),
                ("maintenance", "host_state"))


def policy_from(config):
    scheduler = config["scheduler"]
    return Policy(cpu_overcommit=float(scheduler["cpu_overcommit"]),
                  memory_overcommit=float(scheduler["memory_overcommit"]),
                  strategy_mode=scheduler["strategy_mode"])


def snapshot(session, host_ids=None, lock=None):
    """The cluster (or the given hosts, row-locked with `lock`) as a scheduler snapshot,
    and the device rows it was built from."""
    hosts, devices, vms, rows = cluster_views(session, host_ids, lock)
    return Snapshot.build(hosts, devices, vms), rows


def cluster_views(session, host_ids=None, lock=None):
    """(host views, device views, VM views, device rows) of the cluster or of `host_ids`."""
    hosts_q, devices_q = select(Host), select(Device)
    vms_q = select(Vm).where(or_(Vm.host_id.is_not(None), Vm.moving_to.is_not(None)))
    if host_ids is not None:
        hosts_q = hosts_q.where(Host.id.in_(host_ids))
        devices_q = devices_q.where(Device.host_id.in_(host_ids))
        vms_q = vms_q.where(or_(Vm.host_id.in_(host_ids), Vm.moving_to.in_(host_ids)))
    lock = lock or (lambda statement: statement)
    hosts = session.scalars(lock(hosts_q.order_by(Host.id))).all()
    devices = session.scalars(lock(devices_q.order_by(Device.host_id, Device.id))).all()
    vms = session.scalars(vms_q.order_by(Vm.host_id, Vm.name)).all()
    usage = usage_by_host(vms)
    seen = {host.id for host in hosts}
    return ([host_view(h, usage.get(h.id, (0, 0))) for h in hosts],
            [device_view(d) for d in devices],
            [vm_view(v) for v in vms if v.host_id in seen], devices)


def usage_by_host(vms):
    """{host id: (vCPUs, MiB)} reserved by `vms`; a moving VM counts on both its hosts."""
    usage = {}
    for vm in vms:
        for host_id in {vm.host_id, vm.moving_to} - {None}:
            cpus, memory = usage.get(host_id, (0, 0))
            usage[host_id] = (cpus + vm.vcpus, memory + vm.memory_mib)
    return usage


def host_view(host, usage=(0, 0)):
    return HostView(host.id, host.cluster, host.status, host.state, host.iommu_enabled,
                    host.iommu_ready, host.cpu_threads, host.memory_mib, usage[0], usage[1])


def device_view(device):
    return DeviceView(device.host_id, device.kind, device.id, device.type, device.vendor_id,
                      device.product_id, device.state, device.status, device.vm, device.shared,
                      device.assignable, device.iommu_group, device.usb_major, device.name)


def vm_view(vm):
    return VmView(vm.name, vm.host_id, vm.state, vm.anti_affinity_group, vm.tenant)


def install_metrics(app):
    """Scheduler counters in `app`'s registry; placement code outside an app counts nothing."""
    app.extensions["hostplane_scheduler_metrics"] = (
        counter(app, "hostplane_controller_scheduler_decisions",
                "Scheduler decisions by operation (explain, create, attach) and outcome "
                "(placed, refused, contended)", ["operation", "outcome"]),
        counter(app, "hostplane_controller_scheduler_refusals",
                "Refused placements by kind of reason (each kind present counts once)",
                ["reason"]))


def explain(db, request, policy):
    """What a create or attach would do; changes nothing (counted as an `explain`)."""
    placement = _placement(db, request, policy)
    _count("explain", placement)
    return placement


def _placement(db, request, policy):
    from controller.snapshot_cache import cache_for   # it builds on this module's views
    return cache_for(db).place(request, policy)


def _count(operation, placement, outcome=None):
    metrics = (current_app.extensions.get("hostplane_scheduler_metrics")
               if has_app_context() else None)
    if metrics is None:
        return
    decisions, refusals = metrics
    if outcome is None:
        outcome = "placed" if placement.chosen is not None else "refused"
    decisions.labels(operation, outcome).inc()
    if outcome == "refused":
        for kind in reason_kinds(placement.rejected.values()):
            refusals.labels(kind).inc()


def reason_kinds(reason_lists):
    """The kinds among per-host reasons; hosts rejected alike share one tuple, so
    distinct tuples are few even over ten thousand hosts."""
    kinds = set()
    for reasons in {id(reasons): reasons for reasons in reason_lists}.values():
        for reason in reasons:
            kinds.add(next((kind for phrase, kind in REASON_KINDS if phrase in reason),
                           "other"))
    return sorted(kinds)


_HOLDER = re.compile(r"(attached to (?:VM )?|held by (?:VM )?|which VM )"
                     r"([A-Za-z0-9][A-Za-z0-9_.-]{0,62})")
_HOLDER_DETAILS = ("vm", "vms", "holder", "conflicts")


def rejected_for(db, tenant, rejected):
    """{host: [reasons]} as `tenant` may read them: a device held by a VM that is not the
    tenant's own is "attached to another VM" (the admin reads every name)."""
    hosts = {host_id: list(reasons) for host_id, reasons in sorted(rejected.items())}
    if tenant is None or not hosts:
        return hosts
    hide = _hider(db, tenant)
    return {host_id: [hide(reason) for reason in reasons] for host_id, reasons in hosts.items()}


def error_for(db, tenant, error):
    """An agent's refusal as `tenant` may read it: holders' names that are not its own
    VMs' are hidden in the message and dropped from the details."""
    if tenant is None:
        return error
    error.message = _hider(db, tenant)(error.message)
    error.details = {k: v for k, v in error.details.items() if k not in _HOLDER_DETAILS}
    error.args = (error.message,)
    return error


def _hider(db, tenant):
    with db.read() as session:
        own = set(session.scalars(select(Vm.name).where(Vm.tenant == tenant)))

    def hide(match):
        return match.group(0) if match.group(2) in own else match.group(1) + "another VM"
    return lambda text: _HOLDER.sub(hide, text)


def place_and_claim(db, request, policy, new_vm, attempts=5):
    """Reserve devices and capacity for `request`; returns (host_id, [device rows' ids],
    the host NUMA node chosen for the VM or None).

    `new_vm` (a dict of Vm columns) is inserted in the claiming transaction; None when
    devices are added to `request.existing_vm`.
    """
    operation = "create" if new_vm is not None else "attach"
    placement = _placement(db, request, policy)
    for _ in range(attempts):
        if placement.chosen is None:
            _count(operation, placement)
            raise unplaceable(request, placement, db)
        try:
            claimed = db.transaction(lambda session: _claim_on(
                session, db, request, policy, placement.chosen.host_id, new_vm))
        except IntegrityError:   # PostgreSQL: a create of the same name committed first
            raise name_taken(request) from None
        if claimed is not None:
            _count(operation, placement)
            return placement.chosen.host_id, list(claimed.devices), claimed.numa_node
        placement = _placement(db, request, policy)
    _count(operation, placement, "contended")
    raise Conflict("lost the race for these devices several times; try again",
                   code="claim_contended")


def name_taken(request):
    """409 for a create of a name in use; a tenant is not told whose it is, or whether
    the name is used at all rather than merely unavailable."""
    if request.tenant is not None:
        return Conflict(f"the name {request.name} is not available; choose another",
                        code="name_taken")
    return Conflict(f"VM {request.name} already exists", code="name_taken")


def _claim_on(session, db, request, policy, host_id, new_vm):
    if new_vm is not None and session.get(Vm, new_vm["name"]) is not None:
        raise name_taken(request)
    moving = request.existing_vm is not None and request.existing_vm.host_id != host_id
    # both hosts' rows when moving, in id order, as every writer takes them
    db.lock_hosts(session, {host_id, request.existing_vm.host_id} if moving else {host_id})
    local, rows = snapshot(session, [host_id], lock=db.locked)
    if moving:
        _reserve_move(session, db, request.existing_vm, host_id)
    chosen = place(request, local, policy).chosen
    if chosen is None:
        return None
    by_key = {(row.kind, row.id): row for row in rows}
    if new_vm is not None:
        row = Vm(host_id=host_id, **new_vm)
        vm_states.begin_create(row, new_vm["op_id"], new_vm["op_since"])
        session.add(row)
        session.flush()   # PostgreSQL: a racing insert of the name fails here, in the retry
    for key in chosen.devices:
        device_states.claim(by_key[key], request.name)
    return chosen


def _reserve_move(session, db, seen, target):
    """Count the VM on `target` too (`moving_to`) while it moves, if it is still the
    stopped, device-less VM the placement saw; a second move of it at once is refused."""
    vm = session.scalars(db.locked(select(Vm).where(Vm.name == seen.name))).first()
    if vm is None:
        raise Conflict(f"VM {seen.name} was deleted meanwhile", code="vm_gone")
    if vm.moving_to is not None or vm.host_id != seen.host_id or vm.state != "stopped":
        raise Conflict(f"{seen.name} changed meanwhile ({vm.state} on {vm.host_id}"
                       + (f", moving to {vm.moving_to}" if vm.moving_to else "") + ")",
                       code="vm_busy")
    vm_states.begin_move(vm, target)


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
        if device.status == "attached":
            device_states.release(device, name)
        else:
            device.vm = None


def unplaceable(request, placement, db):
    """422 for a VM that fits nowhere; 409 when an existing VM cannot take the devices
    (they are elsewhere or held): the VM is placed, the request conflicts with it."""
    hosts = rejected_for(db, request.tenant, placement.rejected)
    if request.existing_vm is not None:
        vm_host = request.existing_vm.host_id
        why = "; ".join(hosts.get(vm_host, [])) or "no host can take these devices"
        return Conflict(f"{request.name} on {vm_host} cannot take these devices: {why}",
                        code="device_not_attachable", details={"hosts": hosts})
    if not hosts:
        message = "no hosts are registered"
    else:
        message = f"{request.name} fits on none of {len(hosts)} hosts"
    return Unplaceable(message, code="unplaceable", details={"hosts": hosts})
