"""The cluster's device inventory. Tenants see only what an admin shared; recalling a
share blocks new claims by tenants and leaves devices already attached where they are."""

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from controller.api.hosts import _iso
from controller.api.schemas import check_path_ids, DevicePatch
from controller.db.models import Device, Host, Vm
from controller.pools import device_pools
from controller.services import current, require_admin, tenant
from hostplane.api import describe, parse_body
from hostplane.core import device_states
from hostplane.errors import BadRequest, Conflict, NotFound

bp = Blueprint("devices", __name__)
check_path_ids(bp)
FILTERS = {"host": "host id", "cluster": "cluster name", "type": "gpu, gpu-audio, nic, usb, ...",
           "status": "ready, attached, not_assignable or unavailable", "kind": "pci or usb",
           "pool": "device pool name"}


@bp.get("/v1/devices")
@describe("Every device of every host (tenants: the shared ones)", query=FILTERS,
          tags=["devices"])
def listing():
    unknown = set(request.args) - set(FILTERS)
    if unknown:
        raise BadRequest(f"unknown filter {sorted(unknown)[0]}", code="invalid_filter",
                         details={"filters": sorted(FILTERS)})
    query = select(Device).order_by(Device.host_id, Device.id)
    args = request.args
    if args.get("host"):
        query = query.where(Device.host_id == args["host"])
    if args.get("cluster"):
        query = query.join(Host, Host.id == Device.host_id).where(Host.cluster == args["cluster"])
    for column in ("type", "status", "kind"):
        if args.get(column):
            query = query.where(getattr(Device, column) == args[column])
    if tenant() is not None:
        query = query.where(Device.shared.is_(True), Device.kind == "pci")
    with current().db.read() as session:
        mine = _own_vms(session)
        devices = session.scalars(query).all()
        pools = device_pools(session, devices)
        if args.get("pool"):
            devices = [d for d in devices if pools.get((d.host_id, d.id)) == args["pool"]]
        return jsonify({"devices": [render(d, mine, pools.get((d.host_id, d.id)))
                                    for d in devices]})


@bp.get("/v1/devices/<host_id>/<path:device_id>")
@describe("One device", tags=["devices"])
def show(host_id, device_id):
    with current().db.read() as session:
        device = _get(session, host_id, device_id)
        pool = device_pools(session, [device]).get((host_id, device_id))
        return jsonify(render(device, _own_vms(session), pool))


@bp.patch("/v1/devices/<host_id>/<path:device_id>")
@describe("Enable/disable, rename or share a device", body=DevicePatch, tags=["devices"])
def patch(host_id, device_id):
    require_admin("changing devices")
    body = parse_body(DevicePatch)
    with current().db.write() as session:
        device = _get(session, host_id, device_id)
        if body.state == "enabled":
            device_states.enable(device)
        elif body.state == "disabled":
            device_states.disable(device)
        if body.name is not None:
            device.name = body.name
        if body.shared is not None:
            if body.shared and device.kind == "usb":
                raise Conflict("USB devices are admin-only and cannot be shared",
                               code="usb_admin_only")
            device.shared = body.shared
        return jsonify(render(device, pool=device_pools(session, [device]).get(
            (host_id, device_id))))


@bp.delete("/v1/devices/<host_id>/<path:device_id>")
@describe("Forget a device that is unavailable", responses=(204, 409), tags=["devices"])
def delete(host_id, device_id):
    require_admin("removing devices")
    with current().db.write() as session:
        device = _get(session, host_id, device_id)
        if not device_states.can_delete(device):
            raise Conflict(f"device {device_id} is {device.status}; only an unavailable "
                           "device can be deleted", code="device_not_unavailable")
        session.delete(device)
        host = session.get(Host, host_id)
        host.etag = None   # the next fetch reads everything, so a newcomer there is added
    return "", 204


def _get(session, host_id, device_id):
    device = session.get(Device, (host_id, device_id))
    if device is None or (tenant() is not None and not device.shared):
        raise NotFound(f"no device {device_id} on host {host_id}", code="device_not_found")
    return device


def _own_vms(session):
    """None for the admin (sees every holder); a tenant sees only its own VMs' names."""
    if tenant() is None:
        return None
    return set(session.scalars(select(Vm.name).where(Vm.tenant == tenant())))


def render(device, visible_vms=None, pool=None):
    facts = device.facts or {}
    vm = device.vm if visible_vms is None or device.vm in visible_vms else None
    # A PCI function's model is its device_id, a USB device's its product_id, as the
    # agent says them (the database keeps both in one column).
    model_key = "device_id" if device.kind == "pci" else "product_id"
    return {"host_id": device.host_id, "id": device.id, "kind": device.kind,
            "type": device.type, "vendor_id": device.vendor_id, "pool": pool,
            model_key: device.product_id, "name": device.name, "state": device.state,
            "status": device.status, "vm": vm, "shared": device.shared,
            "assignable": device.assignable,
            "not_assignable_reason": device.not_assignable_reason,
            "iommu_group": device.iommu_group, "numa_node": device.numa_node,
            "upstream": device.upstream or [], "link": device.link,
            "host_use": facts.get("host_use"),
            "usb_version": facts.get("usb_version"),
            "manufacturer": facts.get("manufacturer"), "product": facts.get("product"),
            "reported_vm": device.reported_vm if visible_vms is None else None,
            # held by a domain the controller has no record of (GET /v1/orphans)
            "orphan": (device.reported_vm if visible_vms is None and device.vm is None
                       and device.status == device_states.ATTACHED else None),
            "unavailable_reason": device.unavailable_reason,
            "created_at": _iso(device.created_at)}
