"""The pool side of a claim: pools locked, tenant quotas checked, in the claim's own
transaction (controller.claims.claim_on calls it after the host rows are locked).

A claim from a pool holds the pool's row shared (`FOR SHARE`) and a tenant's claim its share
row exclusively, after the host rows; so a tenant's racing creates are counted one after
the other wherever they land, and a pool cannot be deleted while a claim from it commits.
SQLite's `BEGIN IMMEDIATE` already serialises every writer.
"""

import threading
import weakref

from sqlalchemy import bindparam, select, tuple_

from controller.db.models import Device, Vm
from controller.db.pool_models import DevicePool, PoolShare
from hostplane.core.placement_pools import pf_model
from hostplane.core.pools import PoolMatch, model_of, quota_refusal
from hostplane.errors import Conflict, Forbidden, NotFound

_seen = weakref.WeakKeyDictionary()   # Database → seen_pools
_seen_lock = threading.Lock()


def check_pool_claim(session, db, request, host_id, devices, index):
    """Lock the asked pools (gone or changed since the placement: 404/409) and, for a
    tenant, check the quota of each pool the claim takes devices of, counting what its
    VMs hold now (403); a sibling from a pool not shared with it is 403 too."""
    names = {"names": sorted({ask.pool for ask in request.pools})}
    rows = {row.name: row for row in session.connection().execute(
        _ASKED_POOLS if db.is_sqlite else _ASKED_POOLS_SHARED, names)}
    for ask in request.pools:
        row = rows.get(ask.pool)
        if row is None or pool_match(row) != ask.match:
            seen_pools(db).clear()   # what controller.pools.pool_asks reuses is stale
        if row is None:
            raise pool_not_found(ask.pool, "was deleted meanwhile")
        if pool_match(row) != ask.match:
            raise Conflict(f"device pool {ask.pool} changed meanwhile; try again",
                           code="pool_changed")
    if request.tenant is None:
        return
    charged = _charged_pools(session, rows, index, host_id, devices)
    for name in sorted(charged):
        share_row = session.scalars(db.locked(select(PoolShare).where(
            PoolShare.pool == name, PoolShare.tenant == request.tenant))).first()
        match, adding = charged[name]
        if share_row is None and name in rows:
            seen_pools(db).clear()
            raise pool_not_found(name, "is no longer shared with you")
        if share_row is None:
            raise Forbidden(f"what you asked shares an IOMMU group with {adding} device(s) "
                            f"of device pool {name}, which is not shared with you",
                            code="pool_not_shared", details={"pool": name})
        used = used_by(session, match, request.tenant)
        refusal = quota_refusal(name, used, adding, share_row.max_count)
        if refusal:
            raise quota_exceeded(refusal)


def quota_exceeded(refusal):
    """The 403 of a create past a tenant's quota (`quota_refusal`'s details)."""
    return Forbidden(f"quota of device pool {refusal['pool']} exceeded: {refusal['used']} of "
                     f"{refusal['limit']} in use, {refusal['asked']} more asked",
                     code="quota_exceeded", details=refusal)


# Built once (a claim from pools runs it): the asked pools as plain rows, in name order,
# and on PostgreSQL held shared until the claim commits.
_ASKED_POOLS = (select(DevicePool.__table__)
                .where(DevicePool.__table__.c.name.in_(bindparam("names", expanding=True)))
                .order_by(DevicePool.__table__.c.name))
_ASKED_POOLS_SHARED = _ASKED_POOLS.with_for_update(read=True)


def seen_pools(db):
    """{(tenant, pool name): (PoolMatch, time.monotonic() found)} that pool asks of this
    process may reuse (controller.pools.pool_asks); cleared when a claim finds one stale."""
    with _seen_lock:
        return _seen.setdefault(db, {})


def _charged_pools(session, asked, index, host_id, devices):
    """{pool name: (match, devices of the claim in it)} for every pool the claim takes
    devices of: the asked pools, and the pools of IOMMU-group siblings taken with them,
    so that a cheap pool's share never hands out another pool's devices uncounted."""
    rows = dict(asked)
    rows.update((row.name, row) for row in session.scalars(
        select(DevicePool).where(DevicePool.name.not_in(list(asked)))))
    charged = {}
    for name, row in rows.items():
        match = pool_match(row)
        adding = sum(1 for kind, device_id in devices
                     if _fits_in_index(match, index, host_id, kind, device_id))
        if adding or name in asked:
            charged[name] = (match, adding)
    return charged


def pool_not_found(name, why):
    return NotFound(f"device pool {name} {why}", code="pool_not_found", details={"pool": name})


def pf_models_of(session, devices):
    """{(host_id, PF address): "vvvv:dddd"} for the virtual functions among `devices`."""
    wanted = {(d.host_id, d.physfn) for d in devices if d.kind == "pci" and d.physfn}
    found = {}
    wanted_list = sorted(wanted)
    for start in range(0, len(wanted_list), 500):
        chunk = wanted_list[start:start + 500]
        for pf in session.scalars(select(Device).where(
                tuple_(Device.host_id, Device.id).in_(chunk))):
            found[(pf.host_id, pf.id)] = model_of(pf)
    return found


def used_by(session, match, tenant_name):
    held = session.scalars(select(Device).join(Vm, Vm.name == Device.vm).where(
        Vm.tenant == tenant_name, Device.kind == "pci", Device.vendor_id == match.vendor_id,
        Device.product_id == match.device_id)).all()
    pf_models = pf_models_of(session, held)
    return sum(1 for d in held if match.fits(d, pf_models.get((d.host_id, d.physfn))))


def _fits_in_index(match, index, host_id, kind, device_id):
    device = index.device(host_id, kind, device_id)
    return device is not None and match.fits(device, pf_model(index, device))


def pool_match(row):
    return PoolMatch(row.vendor_id, row.device_id, row.subsystem_vendor_id,
                     row.subsystem_device_id, row.type, row.vf_of)
