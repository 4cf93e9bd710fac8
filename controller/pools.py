"""Device pools as the controller keeps them: CRUD, shares with tenants, what a request's
pool asks resolve to, and each device's pool.

The pool rule itself (what fits, overlap, counts) is hostplane.core.pools; the pool side of
a claim (locks, quotas) is controller.pool_claims. A pool is changed, shared or deleted
under its own row lock, which a claim from it holds shared until it commits.
"""

import time

from sqlalchemy import select, text

from controller.db.models import Device, Host, iso
from controller.db.pool_models import DevicePool, PoolShare
from controller.pool_claims import (pf_models_of, pool_match, pool_not_found, seen_pools,
                                   used_by)
from controller.services import current, require_admin, tenant
from hostplane.api import checked
from hostplane.core.ids import check_name
from hostplane.core.placement_index import host_reasons
from hostplane.core.placement_pools import PoolAsk
from hostplane.core.pools import (Pool, overlapping, pool_counts, pool_of, quota_refusal,
                                  shared_devices)
from hostplane.errors import Conflict, NotFound

POOL_SEEN_S = 2.0   # how long a create may reuse a pool it found (pool_asks)


# --- reading --------------------------------------------------------------------------
def listing():
    """Every pool (a tenant: those shared with it), with counts."""
    with current().db.read() as session:
        unusable = _unusable_hosts(session)
        return [_render(session, row, unusable=unusable) for row in _visible_rows(session)]


def get(name):
    with current().db.read() as session:
        return _render(session, _visible(session, name))


def pool_asks(asks, reuse=False):
    """PoolAsks for the request's `devices`: 404 `pool_not_found` for a pool that does not
    exist or, for a tenant, is not shared with it.

    With `reuse` (a create or attach), a pool found here is reused for `POOL_SEEN_S`
    without reading it again (a create read its pool in a transaction of its own): the
    claim locks and re-reads every asked pool and the caller's share anyway, and refuses
    one changed, deleted or unshared since (controller.pool_claims), which forgets it. A
    pool not found is always read again, so one just made or shared is never refused
    from memory; a pool changed in this process is forgotten at once."""
    if not asks:
        return ()
    seen, now = seen_pools(current().db), time.monotonic()
    names = {ask.pool for ask in asks}
    matches = {}
    for name in names:
        found = seen.get((tenant(), name))
        if reuse and found is not None and now - found[1] < POOL_SEEN_S:
            matches[name] = found[0]
    missing = names - matches.keys()
    if missing:
        with current().db.read() as session:
            for name in sorted(missing):
                matches[name] = pool_match(_visible(session, name))
                seen[(tenant(), name)] = (matches[name], now)
    return tuple(PoolAsk(ask.pool, matches[ask.pool], ask.count) for ask in asks)


def placed_from_pools(asks, place):
    """`place(PoolAsks)` on the pools as this process last found them; once more on the
    pools read afresh when its claim found one changed or gone since (the claim made
    nothing, and the caller should not get a 409 for what it could not see)."""
    pools = pool_asks(asks, reuse=True)   # a pool it cannot find is 404 at once
    try:
        return place(pools)
    except (Conflict, NotFound) as exc:
        if not asks or exc.code not in ("pool_changed", "pool_not_found"):
            raise
    return place(pool_asks(asks))


def quotas(asks):
    """For a tenant's explain: per asked pool, what it holds, asks and may hold (an
    `exceeded` one makes the create 403 wherever it lands; IOMMU-group siblings of the
    pool taken along are counted by the create, not here)."""
    if tenant() is None or not asks:
        return []
    asked = {}
    for ask in asks:
        asked[ask.pool] = asked.get(ask.pool, 0) + ask.count
    with current().db.read() as session:
        found = []
        for name, count in sorted(asked.items()):
            share_row = session.get(PoolShare, (name, tenant()))
            if share_row is None:   # unshared since the asks were read: the create says so
                continue
            used = used_by(session, pool_match(session.get(DevicePool, name)), tenant())
            found.append({"pool": name, "used": used, "asked": count,
                          "limit": share_row.max_count,
                          "exceeded": quota_refusal(name, used, count,
                                                    share_row.max_count) is not None})
        return found


def device_pools(session, devices):
    """{(host_id, id): pool name} for the given device rows (a tenant: its pools only)."""
    pools = [_pool(row) for row in _visible_rows(session)]
    if not pools:
        return {}
    pf_models = pf_models_of(session, devices)
    return {(d.host_id, d.id): pool_of(pools, d, pf_models.get((d.host_id, d.physfn)))
            for d in devices if d.kind == "pci"}


def standings(session):
    """{pool name: counts} of every pool (the metrics' view: no tenant filter)."""
    unusable = _unusable_hosts(session)
    return {row.name: pool_counts(_members(session, pool_match(row)), unusable)
            for row in session.scalars(select(DevicePool).order_by(DevicePool.name))}


# --- changing (admin) -----------------------------------------------------------------
def create(body):
    require_admin("creating device pools")
    match = checked(body.match, code="invalid_request")

    def write(session):
        _serialise_pool_changes(session)
        if session.get(DevicePool, body.name) is not None:
            raise Conflict(f"device pool {body.name} already exists", code="name_taken")
        _refuse_overlap(session, body.name, match)
        row = DevicePool(name=body.name, **match.as_dict())
        session.add(row)
        session.flush()
        return _render(session, row)
    return current().db.transaction(write)


def patch(name, body):
    require_admin("changing device pools")

    def write(session):
        _serialise_pool_changes(session)
        row = _locked_pool(session, name)
        match = checked(body.match, pool_match(row), code="invalid_request")
        _refuse_overlap(session, name, match)
        kept = {(d.host_id, d.id) for d in _members(session, match)}
        _refuse_held(name, [d for d in _members(session, pool_match(row))
                            if (d.host_id, d.id) not in kept], "would leave out")
        row.update_match(match)
        session.flush()
        return _render(session, row)
    return _forgetting_seen(current().db.transaction(write))


def delete(name):
    """Refused (409, naming the VMs) while any device of the pool is attached."""
    require_admin("deleting device pools")

    def write(session):
        row = _locked_pool(session, name)
        _refuse_held(name, _members(session, pool_match(row)), "has")
        session.delete(row)
    _forgetting_seen(current().db.transaction(write))


def _refuse_held(name, devices, doing):
    """409 `pool_in_use` naming the VMs (and orphan domains) that hold any of `devices`: a
    held device leaves its pool only when let go, or it would count against no quota."""
    attached = [d for d in devices if d.status == "attached"]
    if not attached:
        return
    vms = sorted({d.vm for d in attached if d.vm})
    orphans = sorted({f"{d.host_id}/{d.reported_vm or '?'}" for d in attached if not d.vm})
    holders = ([f"VMs {', '.join(vms)}"] if vms else []) + (
        [f"orphan domains {', '.join(orphans)} (GET /v1/orphans)"] if orphans else [])
    raise Conflict(f"device pool {name} {doing} {len(attached)} attached devices, held by "
                   + " and ".join(holders), code="pool_in_use", details={
                       "vms": vms, "orphans": orphans,
                       "devices": [f"{d.host_id}/{d.id}" for d in attached]})


def share(name, tenant_name, max_count):
    require_admin("sharing device pools")
    tenant_name = _known_tenant(tenant_name)

    def write(session):
        _locked_pool(session, name)
        row = session.scalars(current().db.locked(select(PoolShare).where(
            PoolShare.pool == name, PoolShare.tenant == tenant_name))).first()
        if row is None:
            row = PoolShare(pool=name, tenant=tenant_name, max_count=max_count)
            session.add(row)
        row.max_count = max_count
        session.flush()
        return _render_share(session, row)
    return current().db.transaction(write)


def unshare(name, tenant_name):
    """The tenant's VMs keep what they hold; it cannot claim more from the pool."""
    require_admin("sharing device pools")
    tenant_name = checked(check_name, tenant_name, "tenant", code="invalid_name")

    def write(session):
        _locked_pool(session, name)
        row = session.get(PoolShare, (name, tenant_name))
        if row is None:
            raise NotFound(f"device pool {name} is not shared with {tenant_name}",
                           code="share_not_found")
        session.delete(row)
    _forgetting_seen(current().db.transaction(write))


# --- helpers --------------------------------------------------------------------------
def _forgetting_seen(result):
    """`result`, once the pools pool_asks found in this process are forgotten."""
    seen_pools(current().db).clear()
    return result


def _visible_rows(session):
    query = select(DevicePool).order_by(DevicePool.name)
    if tenant() is not None:
        query = query.join(PoolShare, PoolShare.pool == DevicePool.name).where(
            PoolShare.tenant == tenant())
    return session.scalars(query).all()


def _visible(session, name):
    row = session.get(DevicePool, name)
    if row is None or (tenant() is not None and session.get(PoolShare, (name, tenant())) is None):
        raise pool_not_found(name, "does not exist")
    return row


def _locked_pool(session, name):
    row = session.scalars(current().db.locked(select(DevicePool).where(
        DevicePool.name == name))).first()
    if row is None:
        raise pool_not_found(name, "does not exist")
    return row


def _serialise_pool_changes(session):
    """Two pool writers at once could each miss the other's overlap: one at a time
    (PostgreSQL; SQLite's writers are serial already). Claims are not held up."""
    if session.bind.dialect.name == "postgresql":
        session.execute(text("LOCK TABLE device_pools IN SHARE ROW EXCLUSIVE MODE"))


def _refuse_overlap(session, name, match):
    others = [_pool(row) for row in session.scalars(select(DevicePool).where(
        DevicePool.name != name).order_by(DevicePool.name))]
    clashes = overlapping(match, others)
    if not clashes:
        return
    devices = _members(session, match)
    pf_models = pf_models_of(session, devices)
    shared = {pool.name: shared_devices(match, pool, devices,
                                        lambda d: pf_models.get((d.host_id, d.physfn)))
              for pool in clashes}
    raise Conflict(f"this match could take devices of device pool "
                   f"{', '.join(shared)}; a device belongs to one pool at most (narrow it "
                   "by subsystem ids, type or vf_of)", code="pool_overlap",
                   details={"pools": shared})


def _members(session, match):
    """The device rows that are in the pool of `match` now."""
    rows = session.scalars(select(Device).where(
        Device.kind == "pci", Device.vendor_id == match.vendor_id,
        Device.product_id == match.device_id).order_by(Device.host_id, Device.id)).all()
    pf_models = pf_models_of(session, rows)
    return [d for d in rows if match.fits(d, pf_models.get((d.host_id, d.physfn)))]


def _unusable_hosts(session):
    """Hosts where nothing is placed now (controller.placement's rule for hosts, plus the
    IOMMU a device claim needs)."""
    return {host.id for host in session.scalars(select(Host))
            if host_reasons(host) or not (host.iommu_enabled and host.iommu_ready)}


def _pool(row):
    return Pool(row.name, pool_match(row))


def _known_tenant(name):
    name = checked(check_name, name, "tenant", code="invalid_name")
    if name not in current().config["tenants"]:
        raise NotFound(f"no tenant {name} is configured ([tenants] in controller.toml)",
                       code="tenant_not_found")
    return name


def _render(session, row, unusable=None):
    members = _members(session, pool_match(row))
    if unusable is None:
        unusable = _unusable_hosts(session)
    answer = {"name": row.name, **pool_match(row).as_dict(),
              **pool_counts(members, unusable),
              "created_at": iso(row.created_at)}
    shares = session.scalars(select(PoolShare).where(PoolShare.pool == row.name)
                             .order_by(PoolShare.tenant)).all()
    if tenant() is None:
        answer["shares"] = [_render_share(session, share_row) for share_row in shares]
    else:
        answer["quota"] = next(_render_share(session, s) for s in shares
                               if s.tenant == tenant())
    if not members:   # on every read, not only when made: a match that names nothing
        answer["warning"] = ("no known device matches: the pool has size 0 until a host "
                             "reports one")
    return answer


def _render_share(session, row):
    match = pool_match(session.get(DevicePool, row.pool))
    return {"pool": row.pool, "tenant": row.tenant, "max_count": row.max_count,
            "used": used_by(session, match, row.tenant)}
