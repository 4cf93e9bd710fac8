"""The host registry behind `/v1/hosts`: register, read, change, forget.

Maintenance stops new placements only: running VMs keep running and keep their devices
(drain them by stopping/deleting); `disabled` is the same for the scheduler. Switching
`iommu_enabled` off blocks new GPU claims and leaves attached GPUs alone.

Registration sends the agent's token to its URL: under `[server] require_agent_tls` only
https:// URLs are taken, and an agent whose certificate does not verify (wrong CA, a name
that is not its address) is refused with the TLS library's reason, not retried later.
"""

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from controller import networks
from controller.db.models import Host, Vm, iso
from controller.services import current
from hostplane.core import host_states
from hostplane.core.ids import HOST_ID
from hostplane.errors import ApiError, BadRequest, Conflict, DependencyDown, NotFound


def register(body):
    """Ask the agent who it is, keep it as `connecting`, poll it once; its view."""
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
                             cluster=body.cluster, status=host_states.CONNECTING))
    except IntegrityError:
        raise Conflict(f"host {host_id} is already registered", code="host_exists") from None
    ctl.poller.fetch_now(host_id, background=False)
    return render(_get(host_id))


def _verified_health(ctl, body):
    """The agent's /v1/health, asked only over a channel the configuration accepts."""
    if ctl.config["server"]["require_agent_tls"] and not body.url.lower().startswith("https://"):
        raise BadRequest("the agent's URL must be https:// while [server] require_agent_tls "
                         "is set (its token would cross the network in clear)",
                         code="agent_tls_required",
                         details={"url": body.url, "setting": "[server] require_agent_tls"})
    client = ctl.agents.at(body.url, body.token)
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


def listing():
    with current().db.read() as session:
        hosts = session.scalars(select(Host).order_by(Host.id)).all()
        usage = _usage(session)
    return [render(h, usage.get(h.id)) for h in hosts]


def get(host_id):
    with current().db.read() as session:
        return render(_get(host_id, session), _usage(session, host_id).get(host_id))


def change(host_id, body):
    """Admin state, IOMMU switch, cluster; a cluster change re-pushes both clusters'
    networks (VXLAN peers shrink in the old one, grow in the new one)."""
    ctl = current()
    with ctl.db.write() as session:
        host = _get(host_id, session)
        left = host.cluster if body.cluster not in (None, host.cluster) else None
        if body.state is not None:
            host_states.set_admin_state(host, body.state)
        if body.iommu_enabled is not None:
            host.iommu_enabled = body.iommu_enabled
        if body.cluster is not None:
            host.cluster = body.cluster
        view = render(host)
    if left is not None:
        networks.after_host_removed(ctl.db, cluster=left, **ctl.network_agents())
        networks.after_resync(ctl.poller, host_id)
    return view


def forget(host_id):
    """Delete a host that runs no VM the controller knows (409 naming them otherwise)."""
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
    networks.after_host_removed(ctl.db, cluster=cluster, **ctl.network_agents())


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
            "last_seen": iso(host.last_seen), "created_at": iso(host.created_at)}


