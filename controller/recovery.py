"""Settles VMs a controller process left in `creating` or `moving` when it died between
its claim and the agents' answers, so no reservation outlives the process that made it.

A create claims (VM row `creating`, devices `attached`) and then asks the agent. If the
process is killed in between, nobody would ever finish or undo it. Once a claim is older
than the longest the create path waits for its agent (`grace_s`), the agent is asked:
the VM exists there → the row takes the agent's state (completed); the agent says 404 →
the claim is released and the row dropped; the agent is unreachable → left for a later
cycle, since only the agent knows.

A move (controller.moves) stamps its row before each agent call; a stamp older than
`grace_s` (or, for a move killed before its first stamp, `grace_s` after a recovery first
saw it) means its process is gone. Both agents are asked: the domain on the target and
not on the source → the move is finished; on the source → rolled back (the target's
definition undefined, storage kept, its claim released); not on the target → rolled back;
otherwise (an agent that does not answer and could change the verdict) a later cycle.

Every controller process may run this at once: each decision is re-checked under the
row's write lock, so the first one wins and the others find the VM settled.
"""

import logging
from datetime import timedelta

from sqlalchemy import select

from controller import moves
from controller.db.models import Host, Vm, utcnow
from controller.placement import release_held
from hostplane.errors import ApiError, Conflict

log = logging.getLogger(__name__)
UNKNOWN = object()   # the agent did not answer


def settle_abandoned_creates(db, client_for, grace_s):
    """Finish or release every `creating` VM older than `grace_s`, then every abandoned
    move (the poller's one entry point); {name: outcome}."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    with db.read() as session:
        stale = session.execute(
            select(Vm.name, Host).outerjoin(Host, Vm.host_id == Host.id)
            .where(Vm.state == "creating", Vm.created_at < cutoff)).all()
    outcomes = {name: _settle(db, client_for, name, host) for name, host in stale}
    return {**outcomes, **settle_abandoned_moves(db, client_for, grace_s)}


def _settle(db, client_for, name, host):
    found = _ask(client_for, host, name)
    if found is UNKNOWN:
        log.info("VM %s: left creating, its agent not answering", name)
        return "unknown"
    with db.write() as session:
        vm = session.scalars(db.locked(select(Vm).where(Vm.name == name))).first()
        if vm is None or vm.state != "creating":
            return "settled elsewhere"
        if found is not None:
            vm.state = found.get("state") or "stopped"
            log.warning("VM %s: create completed after its controller died", name)
            return "completed"
        release_held(session, db, name)
        session.delete(vm)
    log.warning("VM %s: abandoned create released", name)
    return "released"


def settle_abandoned_moves(db, client_for, grace_s):
    """Finish or roll back every move whose stamp is older than `grace_s`; {name: outcome}."""
    cutoff = utcnow().timestamp() - grace_s
    with db.read() as session:
        rows = session.execute(select(Vm.name, Vm.spec, Vm.host_id, Vm.moving_to)
                               .where(Vm.state == "moving")).all()
        wanted = {row.host_id for row in rows} | {row.moving_to for row in rows}
        hosts = {host.id: host for host in session.scalars(
            select(Host).where(Host.id.in_(wanted - {None})))} if rows else {}
    outcomes = {}
    for name, spec, source_id, target_id in rows:
        since = (spec or {}).get("moving_since")
        if since is None:   # killed before its first stamp: watched from now on
            try:
                moves.mark(db, name, target_id)
            except Conflict:
                pass
        elif since < cutoff:
            outcomes[name] = _settle_move(db, client_for, name, hosts.get(source_id),
                                          target_id, hosts.get(target_id))
    return outcomes


def _settle_move(db, client_for, name, source, target_id, target):
    on_target = _ask(client_for, target, name)
    on_source = _ask(client_for, source, name) if on_target is not UNKNOWN else UNKNOWN
    if on_target is UNKNOWN or (on_target is not None and on_source is UNKNOWN):
        log.info("VM %s: left moving to %s, an agent not answering", name, target_id)
        return "unknown"
    if on_target is not None and on_source is None:
        done = moves.settle(db, name, target_id, moved=True,
                            state=on_target.get("state") or "stopped")
        log.warning("VM %s: move to %s finished after its controller died", name, target_id)
        return "moved" if done else "settled elsewhere"
    if on_target is not None:
        try:
            client_for(target).delete_vm(name)   # never delete_storage
        except ApiError as exc:
            log.info("VM %s: left moving, %s did not undefine it (%s)", name, target_id,
                     exc.message)
            return "unknown"
    if on_source is None:
        log.error("VM %s: defined on neither %s nor its source; back on its source record",
                  name, target_id)
    back = on_source.get("state") if isinstance(on_source, dict) else None
    done = moves.settle(db, name, target_id, moved=False, state=back or "stopped")
    log.warning("VM %s: abandoned move to %s rolled back", name, target_id)
    return "rolled back" if done else "settled elsewhere"


def _ask(client_for, host, name):
    """The VM as `host`'s agent has it, None when it has none (or the host is gone),
    UNKNOWN when the agent does not answer."""
    if host is None:
        return None
    try:
        return _on_agent(client_for(host), name)
    except ApiError:
        return UNKNOWN


def _on_agent(agent, name):
    """The VM as its agent has it, or None once the agent has none (ApiError otherwise)."""
    try:
        return agent.vm(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
    agent.delete_vm(name)   # idempotent: nothing half-made may stay behind
    return None
