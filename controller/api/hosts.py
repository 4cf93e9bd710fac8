"""Host registry. Maintenance stops new placements only: running VMs keep running and keep
their devices (drain them by stopping/deleting); `disabled` is the same for the scheduler.
Switching `iommu_enabled` off blocks new GPU claims and leaves attached GPUs alone.

Registration sends the agent's token to its URL: under `[server] require_agent_tls` only
https:// URLs are taken, and an agent whose certificate does not verify (wrong CA, a name
that is not its address) is refused with the TLS library's reason, not retried later."""

from flask import Blueprint, jsonify
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from controller import networks
from controller.api.networks import agents_of
from controller.api.schemas import HostCreate, HostPatch, check_path_ids
from hostplane.core.ids import HOST_ID
from controller.db.models import Host, Vm
from controller.services import current, require_admin
from hostplane.api import describe, parse_body
from hostplane.errors import ApiError, BadRequest, Conflict, DependencyDown, NotFound

bp = Blueprint("hosts", __name__)
check_path_ids(bp)


@bp.post("/v1/hosts")
@describe("Register an agent by URL and token; the controller asks it who it is",
          body=HostCreate, responses=(201, 400, 409, 503), tags=["hosts"])
def register():
    require_admin("registering hosts")
    body = parse_body(HostCreate)
    ctl = current()
    health = _verified_health(ctl, body)
    host_id = str(health.get("host_id") or "")
    if not HOST_ID.fullmatch(host_id):
        raise Conflict(f"the agent did not say which host it is in a form the controller "
                       f"can address ({host_id[:80]!r})", code="agent_without_id")
    try:
        with ctl.db.write() as session:
            if session.get(Host, host_id) is not None:
                raise Conflict(f"host {host_id} is already registered", code="host_exists")
            session.add(Host(id=host_id, url=body.url.rstrip("/"), token=body.token,
                             cluster=body.cluster, status="connecting"))
    except IntegrityError:
        raise Conflict(f"host {host_id} is already registered", code="host_exists") from None
    ctl.poller.fetch_now(host_id, background=False)
    return jsonify(render(_get(host_id))), 201


def _verified_health(ctl, body):
    """The agent's /v1/health, asked only over a channel the configuration accepts."""
    if ctl.config["server"]["require_agent_tls"] and not body.url.lower().startswith("https://"):
        raise BadRequest("the agent's URL must be https:// while [server] require_agent_tls "
                         "is set (its token would cross the network in clear)",
                         code="agent_tls_required",
                         details={"url": body.url, "setting": "[server] require_agent_tls"})
    client = ctl.client_factory(body.url, body.token, timeout=ctl.poller.timeout)
    try:
        health = client.health()
    except DependencyDown as exc:
        if exc.code != "agent_tls_failed":
            raise
        raise BadRequest(f"registration refused: {exc.message}", code="agent_tls_failed",
                         details={**exc.details, "ca": ctl.config["agents"]["ca"] or
                                  "system trust store"}) from None
    try:   # health is open to all: an authenticated call proves the token, before it is kept
        client.host()
    except ApiError as exc:
        if getattr(exc, "agent_status", None) == 401:
            raise BadRequest("the agent refused this token; nothing was registered",
                             code="agent_token_refused", details={"agent": body.url}) from None
        raise
    return health


@bp.get("/v1/hosts")
@describe("Every host with its status, admin state and capacity", tags=["hosts"])
def listing():
    with current().db.read() as session:
        hosts = session.scalars(select(Host).order_by(Host.id)).all()
        usage = _usage(session)
    return jsonify({"hosts": [render(h, usage.get(h.id)) for h in hosts]})


@bp.get("/v1/hosts/<host_id>")
@describe("One host: status, capacity, IOMMU and its NUMA nodes (numa_nodes: id, cpus, "
          "memory_mib, as its agent reports them)", tags=["hosts"])
def show(host_id):
    with current().db.read() as session:
        return jsonify(render(_get(host_id), _usage(session, host_id).get(host_id)))


@bp.patch("/v1/hosts/<host_id>")
@describe("Change admin state (enabled/disabled/maintenance), IOMMU switch or cluster",
          body=HostPatch, tags=["hosts"])
def patch(host_id):
    require_admin("changing hosts")
    body = parse_body(HostPatch)
    ctl = current()
    with ctl.db.write() as session:
        host = _get(host_id, session)
        left = host.cluster if body.cluster not in (None, host.cluster) else None
        for field, value in body.model_dump(exclude_none=True).items():
            setattr(host, field, value)
        view = render(host)
    if left is not None:   # its old cluster's VXLAN peers shrink, its new cluster's grow
        networks.after_host_removed(ctl.db, cluster=left, **agents_of(ctl))
        networks.after_resync(ctl.poller, host_id)
    return jsonify(view)


@bp.delete("/v1/hosts/<host_id>")
@describe("Forget a host that runs no VMs known to the controller", responses=(204, 409),
          tags=["hosts"])
def delete(host_id):
    require_admin("removing hosts")
    ctl = current()
    with ctl.db.write() as session:
        ctl.db.lock_hosts(session, [host_id])   # a claim on it commits first, or waits
        host = _get(host_id, session)
        vms = session.scalars(select(Vm.name).where(
            or_(Vm.host_id == host_id, Vm.moving_to == host_id))).all()
        if vms:
            raise Conflict(f"host {host_id} still has VMs: {', '.join(vms[:10])}",
                           code="host_in_use", details={"vms": vms})
        cluster = host.cluster
        session.delete(host)
    networks.after_host_removed(ctl.db, cluster=cluster, **agents_of(ctl))
    return "", 204


def _get(host_id, session=None):
    if session is None:
        with current().db.read() as session:
            return _get(host_id, session)
    host = session.get(Host, host_id)
    if host is None:
        raise NotFound(f"no host {host_id}", code="host_not_found")
    return host


def _usage(session, host_id=None):
    query = select(Vm.host_id, func.count(), func.sum(Vm.vcpus), func.sum(Vm.memory_mib))
    if host_id is not None:
        query = query.where(Vm.host_id == host_id)
    return {row[0]: row[1:] for row in session.execute(query.group_by(Vm.host_id))}


def render(host, usage=None):
    vms, vcpus, memory = usage or (0, 0, 0)
    return {"id": host.id, "url": host.url, "cluster": host.cluster, "status": host.status,
            "state": host.state, "iommu_enabled": host.iommu_enabled,
            "iommu_ready": host.iommu_ready, "hostname": host.hostname,
            "cpu_threads": host.cpu_threads, "memory_mib": host.memory_mib,
            "numa_nodes": host.numa_nodes or [],
            "vms": vms, "used_vcpus": int(vcpus or 0), "used_memory_mib": int(memory or 0),
            "boot_id": host.boot_id, "generation": host.generation,
            "failures": host.failures, "last_error": host.last_error,
            "last_seen": _iso(host.last_seen), "created_at": _iso(host.created_at)}


def _iso(moment):
    return moment.isoformat() if moment else None
