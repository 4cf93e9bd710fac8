"""The cluster's device inventory behind `/v1/devices`. Tenants see only what an admin
shared; recalling a share blocks new claims by tenants and leaves devices already attached
where they are. Status changes go through hostplane.core.device_states."""

from sqlalchemy import select

from controller.db.models import Device, Host, Vm, iso
from controller.pools import device_pools
from controller.services import current, tenant
from hostplane.core import device_states
from hostplane.errors import Conflict, NotFound


def listing(host=None, cluster=None, pool=None, **columns):
    """Every device (a tenant: the shared PCI ones), filtered by host, cluster, pool and
    the columns given (type, status, kind)."""
    query = select(Device).order_by(Device.host_id, Device.id)
    if host:
        query = query.where(Device.host_id == host)
    if cluster:
        query = query.join(Host, Host.id == Device.host_id).where(Host.cluster == cluster)
    for column, value in columns.items():
        if value:
            query = query.where(getattr(Device, column) == value)
    if tenant() is not None:
        query = query.where(Device.shared.is_(True), Device.kind == "pci")
    with current().db.read() as session:
        mine = _own_vms(session)
        devices = session.scalars(query).all()
        pools = device_pools(session, devices)
        if pool:
            devices = [d for d in devices if pools.get((d.host_id, d.id)) == pool]
        return [render(d, mine, pools.get((d.host_id, d.id))) for d in devices]


def get(host_id, device_id):
    with current().db.read() as session:
        device = _get(session, host_id, device_id)
        pool = device_pools(session, [device]).get((host_id, device_id))
        return render(device, _own_vms(session), pool)


def change(host_id, device_id, body):
    """Enable/disable, rename or share (USB is never shared)."""
    with current().db.write() as session:
        device = _get(session, host_id, device_id)
        if body.state == device_states.ENABLED:
            device_states.enable(device)
        elif body.state == device_states.DISABLED:
            device_states.disable(device)
        if body.name is not None:
            device.name = body.name
        if body.shared is not None:
            if body.shared and device.kind == "usb":
                raise Conflict("USB devices are admin-only and cannot be shared",
                               code="usb_admin_only")
            device.shared = body.shared
        return render(device, pool=device_pools(session, [device]).get((host_id, device_id)))


def forget(host_id, device_id):
    """Delete an unavailable device; the host's next fetch reads everything again, so a
    newcomer at its address is added."""
    with current().db.write() as session:
        device = _get(session, host_id, device_id)
        if not device_states.can_delete(device):
            raise Conflict(f"device {device_id} is {device.status}; only an unavailable "
                           "device can be deleted", code="device_not_unavailable")
        session.delete(device)
        session.get(Host, host_id).etag = None


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
            "created_at": iso(device.created_at)}
