"""L2 networks on the controller: stored once, pushed to every connected host of their clusters.

A network is attached to clusters (a host attribute); the controller PUTs its desired state
to each connected host of those clusters (`PUT /v1/networks/<name>` on the agent, which is
idempotent) and records, per host, `applied` or `failed` with the agent's own error. A
host that (re)connects later gets its cluster's networks from the poller's hook
(`after_resync`); when a host is deleted, the VXLAN networks of its cluster are pushed
again so that the other hosts drop it as a peer (`after_host_removed`). Pushes call the
agents in parallel, at most `PUSH_CONCURRENCY` at once. A `vxlan-pool` is never pushed: it hands out VNIs, lowest free first,
under a lock on the pool row (SQLite: the write transaction's BEGIN IMMEDIATE; PostgreSQL:
SELECT ... FOR UPDATE), with a unique (pool, vni) key behind it.

VTEP addresses: the agent picks its own VTEP inside the pool's `local_cidr`; the controller
needs every host's VTEP to list it as a unicast peer of the others. It takes, per host, the
pool's `vteps` entry (`{"<host id>": "<address>"}`, set at creation or by PATCH) or else
the address of the host's registered URL when that falls inside `local_cidr`. A host with
neither still gets the network, but is nobody's peer (its status says so).
"""

import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from controller.db.models import Host, iso
from controller.db.network_models import Network, NetworkHost
from hostplane.core.networks import parse_spec
from hostplane.errors import ApiError, BadRequest, Conflict, NotFound

log = logging.getLogger(__name__)

POOL = "vxlan-pool"
PUSHED = ("novlan", "vlan", "vxlan")     # kinds the agents build; a pool only hands out VNIs
PUSH_CONCURRENCY = 16                    # agents called at once by one push or delete


# --- creating and deleting -------------------------------------------------------------

def create(db, body):
    """Store the network described by a validated body; returns its name (pushed later)."""
    try:
        with db.write() as session:
            if session.get(Network, body.name) is not None:
                raise _name_taken(body.name)
            row = Network(name=body.name, type=body.type, clusters=list(body.clusters),
                          spec=body.fields())
            if body.type == "vxlan":
                _take_vni(db, session, row, body.vni)
            elif body.type == POOL:
                _check_no_overlap(session, body.name, body.vni_range)
            _check_clusters(session, row)
            session.add(row)
    except IntegrityError:   # the same name or VNI committed by a racing request
        with db.read() as session:
            if session.get(Network, body.name) is not None:
                raise _name_taken(body.name) from None
        raise Conflict("the VNI was taken by a concurrent create; try again",
                       code="vni_taken") from None
    return body.name


def delete(db, client_for, name, concurrency=PUSH_CONCURRENCY):
    """Forget `name` and remove it from every host it was or would be on: {host: outcome}."""
    with db.write() as session:
        row = _get(session, name)
        if row.type == POOL:
            users = session.scalars(select(Network.name).where(Network.pool == name)
                                    .order_by(Network.name)).all()
            if users:
                raise Conflict(f"VXLAN pool {name} still has networks: {', '.join(users)}",
                               code="pool_in_use", details={"networks": list(users)})
        hosts = {host.id: host for host in _targets(session, row)}
        for applied in session.scalars(select(NetworkHost).where(NetworkHost.network == name)):
            hosts.setdefault(applied.host_id, session.get(Host, applied.host_id))
        session.delete(row)
    targets = sorted(hosts.items())
    outcomes = dict(zip([host_id for host_id, _ in targets], _each(
        [lambda host=host: _call(client_for(host), "DELETE", name) for _, host in targets],
        concurrency)))
    return {host_id: ("removed" if status == 200 else "absent" if status == 404 else error)
            for host_id, (status, _body, error) in outcomes.items()}


def set_vteps(db, name, vteps):
    """Replace a pool's per-host VTEP addresses; returns its VXLAN networks (to push again)."""
    with db.write() as session:
        row = _get(session, name)
        row.spec = {**row.spec, "vteps": dict(vteps)}
        return session.scalars(select(Network.name).where(Network.pool == name)).all()


def lowest_free_vni(used, start, end):
    """The smallest VNI in [start, end] not in `used`, or None when the pool is full."""
    candidate = start
    for vni in sorted(v for v in set(used) if start <= v <= end):
        if vni != candidate:
            break
        candidate += 1
    return candidate if candidate <= end else None


# --- pushing ---------------------------------------------------------------------------

def push(db, client_for, names, only_host=None, concurrency=PUSH_CONCURRENCY):
    """PUT each named network to each connected host of its clusters; records the outcomes.

    `only_host` limits the push to that host, except for VXLAN networks whose peers it
    changes: those go to every host. Returns {network: {host: status row as rendered}}.
    """
    with db.read() as session:
        plans = [(name, host, state) for name in names
                 for host, state in desired_states(session, session.get(Network, name))
                 if only_host in (None, host.id) or state["type"] == "vxlan"]
    answers = _each([lambda host=host, name=name, state=state:
                     _call(client_for(host), "PUT", name, state)
                     for name, host, state in plans], concurrency)
    outcomes = [(name, host.id, answer) for (name, host, _), answer in zip(plans, answers)]
    with db.write() as session:
        for name, host_id, (status, answer, error) in outcomes:
            if session.get(Network, name) is None or session.get(Host, host_id) is None:
                continue   # deleted while we pushed
            record = session.get(NetworkHost, (name, host_id))
            if record is None:
                record = NetworkHost(network=name, host_id=host_id)
                session.add(record)
            record.status = "applied" if error is None else "failed"
            record.bridge = (answer or {}).get("bridge") if error is None else None
            record.error = error


def after_resync(poller, host_id):
    """Poller hook: a host (re)connected, so give it its cluster's networks (and new peers)."""
    client_for = poller.agents.of
    try:
        with poller.db.read() as session:
            host = session.get(Host, host_id)
            names = [row.name for row in _attached(session, host.cluster)] if host else []
        push(poller.db, client_for, names, only_host=host_id)
    except Exception:  # noqa: BLE001 - a failed push must not fail the poll or registration
        log.exception("pushing networks to host %s failed", host_id)


def after_host_removed(db, client_for, cluster, concurrency=PUSH_CONCURRENCY):
    """A host left `cluster` (deleted, or moved away): the VXLAN networks there lose it as
    a peer on every remaining host."""
    with db.read() as session:
        names = [row.name for row in _attached(session, cluster) if row.type == "vxlan"]
    push(db, client_for, names, concurrency=concurrency)
    return names


def desired_states(session, row):
    """[(host, agent body)] for each connected host of the network's clusters."""
    if row is None or row.type not in PUSHED:
        return []
    hosts = [host for host in _targets(session, row) if host.status == "connected"]
    if row.type != "vxlan":
        return [(host, {"type": row.type, **row.spec}) for host in hosts]
    pool = session.get(Network, row.pool)
    vteps = {host.id: vtep_of(host, pool.spec) for host in hosts}
    states = []
    for host in hosts:
        peers = sorted({address for other, address in vteps.items()
                        if other != host.id and address and address != vteps[host.id]})
        state = {"type": "vxlan", "vni": row.vni, "local_cidr": pool.spec["local_cidr"],
                 "port": pool.spec["port"], "peers": peers, **row.spec}
        states.append((host, parse_spec(state).model_dump(exclude_none=True)))
    return states


def vtep_of(host, pool_spec):
    """The host's VTEP in the pool: its `vteps` entry, else its URL's address if in the CIDR."""
    given = (pool_spec.get("vteps") or {}).get(host.id)
    if given:
        return given
    try:
        address = ipaddress.ip_address(urlsplit(host.url).hostname or "")
    except ValueError:
        return None
    return str(address) if address in ipaddress.ip_network(pool_spec["local_cidr"]) else None


# --- reading ---------------------------------------------------------------------------

def render_all(session):
    rows = session.scalars(select(Network).order_by(Network.name)).all()
    return [render(session, row) for row in rows]


def render_one(session, name):
    return render(session, _get(session, name))


def render(session, row):
    view = {"name": row.name, "type": row.type, "clusters": row.clusters, **row.spec,
            "created_at": iso(row.created_at)}
    if row.type == POOL:
        view["networks"] = {name: vni for name, vni in session.execute(
            select(Network.name, Network.vni).where(Network.pool == row.name)
            .order_by(Network.vni))}
        return view
    pool = session.get(Network, row.pool) if row.pool else None
    if pool is not None:
        view.update(pool=row.pool, vni=row.vni, local_cidr=pool.spec["local_cidr"],
                    port=pool.spec["port"])
    records = {record.host_id: record for record in session.scalars(
        select(NetworkHost).where(NetworkHost.network == row.name))}
    view["hosts"] = {host.id: _host_status(host, records.get(host.id), pool)
                     for host in _targets(session, row)}
    return view


def _host_status(host, record, pool):
    if record is None:
        status = {"status": "pending", "reason": f"host is {host.status}; not pushed yet"}
    else:
        status = {"status": record.status, "bridge": record.bridge}
        if record.error:
            status["error"] = record.error
    if pool is not None:
        status["vtep"] = vtep_of(host, pool.spec)
        if status["vtep"] is None:
            status["warning"] = (f"no VTEP address known in {pool.spec['local_cidr']}: no "
                                 "other host floods to this one (set the pool's vteps)")
    return status


# --- helpers ---------------------------------------------------------------------------

def _take_vni(db, session, row, asked):
    """Give `row` its pool's lowest free VNI (or `asked`), holding the pool row's lock."""
    pool = session.scalars(db.locked(select(Network).where(Network.name == row.spec["pool"]))
                           ).first()
    if pool is None or pool.type != POOL:
        raise BadRequest(f"pool: no {POOL} named {row.spec['pool']!r}", code="unknown_pool",
                         details={"field": "pool"})
    start, end = pool.spec["vni_range"]
    used = set(session.scalars(select(Network.vni).where(Network.pool == pool.name)))
    if asked is not None:
        if not start <= asked <= end:
            raise BadRequest(f"vni: {asked} is outside pool {pool.name}'s range {start}-{end}",
                             code="invalid_request", details={"field": "vni"})
        if asked in used:
            raise Conflict(f"VNI {asked} of pool {pool.name} is taken", code="vni_taken")
        vni = asked
    else:
        vni = lowest_free_vni(used, start, end)
        if vni is None:
            raise Conflict(f"VXLAN pool {pool.name} has no free VNI ({start}-{end} all used)",
                           code="limit_reached", details={"pool": pool.name})
    spec = dict(row.spec)
    spec.pop("pool")
    row.spec, row.pool, row.vni = spec, pool.name, vni
    row.clusters = row.clusters or list(pool.clusters)


def _check_no_overlap(session, name, vni_range):
    """Pools share hosts' bridge names (br-vx-<vni>), so their ranges must not overlap."""
    start, end = vni_range
    for pool in session.scalars(select(Network).where(Network.type == POOL)):
        other_start, other_end = pool.spec["vni_range"]
        if start <= other_end and other_start <= end:
            raise Conflict(f"vni_range {start}-{end} overlaps pool {pool.name} "
                           f"({other_start}-{other_end})", code="vni_range_overlaps",
                           details={"pool": pool.name})


def _check_clusters(session, row):
    if row.type in PUSHED and not row.clusters:
        raise BadRequest("clusters: attach the network to at least one cluster",
                         code="invalid_request", details={"field": "clusters"})
    known = set(session.scalars(select(Host.cluster).distinct()))
    unknown = sorted(set(row.clusters) - known)
    if unknown:
        raise BadRequest(f"clusters: no host is in cluster {', '.join(unknown)}",
                         code="unknown_cluster", details={"field": "clusters",
                                                          "clusters": unknown})


def _targets(session, row):
    return session.scalars(select(Host).where(Host.cluster.in_(row.clusters))
                           .order_by(Host.id)).all()


def _attached(session, cluster):
    rows = session.scalars(select(Network).where(Network.type.in_(PUSHED))
                           .order_by(Network.name)).all()
    return [row for row in rows if cluster in row.clusters]


def _get(session, name):
    row = session.get(Network, name)
    if row is None:
        raise NotFound(f"no network {name}", code="network_not_found")
    return row


def _name_taken(name):
    return Conflict(f"network {name} already exists", code="name_taken")


def _call(client, method, name, body=None):
    """(status, answer, None) or (status, None, the agent's error with its real status)."""
    try:
        if method == "PUT":
            return 200, client.put_network(name, body), None
        return (200 if client.delete_network(name) else 404), None, None
    except ApiError as exc:
        status = getattr(exc, "agent_status", exc.status)   # absent: the agent never answered
        error = {"status": status, "code": exc.code, "message": exc.message}
        if hasattr(exc, "agent_status"):
            error["details"] = exc.details
        return status, None, error


def _each(calls, concurrency):
    """Run the zero-argument `calls` on at most `concurrency` threads; results in order."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(calls)))) as pool:
        return list(pool.map(lambda call: call(), calls))
