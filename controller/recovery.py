"""Settles VM operations whose agent never answered, or whose controller process died
between its claim and the agent's answer, so no reservation outlives what it was for.

A create claims (VM row `creating` with the operation id it passes the agent, devices
`attached`) and then asks the agent. When no answer comes (a timeout, a process killed
in between), only the agent knows. Once the operation is older than the longest an
agent call may wait (`grace_s`), the agent is asked:
- it has the VM, made by this operation (the id in the domain's metadata) → the row takes
  the agent's state (completed);
- it has no such VM, or one made by another operation → the create is cancelled on the
  agent first (so a request of it still queued there is refused for good), then the claim
  is released and the row dropped;
- it does not answer → left for a later cycle.
A delete that got no answer (`deleting`) is sent again with its operation id until the
agent confirms the domain is gone; then the claim and row go.

A move (controller.moves) stamps its row before each agent call; a stamp older than
`grace_s` (or, for a move killed before its first stamp, `grace_s` after a recovery first
saw it) means its process is gone. Both agents are asked: the domain on the target and
not on the source → the move is finished; on the source → rolled back (the target's
definition undefined, storage kept, its claim released); not on the target → rolled back;
otherwise (an agent that does not answer and could change the verdict) a later cycle.

Every controller process may run this at once: each decision is re-checked under the
row's write lock (controller.vms), so the first one wins and the others find it settled.
"""

import logging
import time

from sqlalchemy import or_, select

from controller import moves
from controller.db.models import Host, Vm
from controller.vm_records import delete_on_agent, finish_delete, forget_create, settle_create
from hostplane.core import vm_states
from hostplane.errors import ApiError, Conflict

log = logging.getLogger(__name__)
UNKNOWN = object()   # the agent did not answer


def settle_abandoned_creates(db, client_for, grace_s):
    """Settle every create and delete older than `grace_s`, then every abandoned move
    (the poller's one entry point); {name: outcome}."""
    cutoff = time.time() - grace_s
    with db.read() as session:
        stale = session.execute(
            select(Vm.name, Vm.state, Vm.op_id, Host).outerjoin(Host, Vm.host_id == Host.id)
            .where(Vm.state.in_((vm_states.CREATING, vm_states.DELETING)),
                   or_(Vm.op_since.is_(None), Vm.op_since < cutoff))).all()
    outcomes = {}
    for name, state, op_id, host in stale:
        settle = _settle_create if state == vm_states.CREATING else _settle_delete
        outcomes[name] = settle(db, client_for, name, op_id, host)
    return {**outcomes, **settle_abandoned_moves(db, client_for, grace_s)}


def _settle_create(db, client_for, name, op_id, host):
    found = _ask(client_for, host, name)
    if found is UNKNOWN:
        log.info("VM %s: left creating, its agent not answering", name)
        return "unknown"
    if found is not None and (op_id is None or found.get("op_id") == op_id):
        try:
            settle_create(db, name, op_id, found.get("state"))
        except (Conflict, vm_states.IllegalVmTransition):
            return "settled elsewhere"
        log.warning("VM %s: create completed without its answer reaching the controller",
                    name)
        return "completed"
    if host is not None:
        try:   # cancel it on the agent before the claim can go to anyone else
            delete_on_agent(client_for(host), name, op_id)
        except ApiError as exc:
            log.info("VM %s: left creating, the agent did not confirm the cancel (%s)",
                     name, exc.message)
            return "unknown"
    if not forget_create(db, name, op_id):
        return "settled elsewhere"
    log.warning("VM %s: create the agent never carried out released", name)
    return "released"


def _settle_delete(db, client_for, name, op_id, host):
    if host is not None:
        try:
            delete_on_agent(client_for(host), name, op_id)
        except ApiError as exc:
            log.info("VM %s: left deleting, its agent did not confirm (%s)", name,
                     exc.message)
            return "unknown"
    if not finish_delete(db, name, op_id):
        return "settled elsewhere"
    log.warning("VM %s: delete finished after its agent answered late", name)
    return "deleted"


def settle_abandoned_moves(db, client_for, grace_s):
    """Finish or roll back every move whose stamp is older than `grace_s`; {name: outcome}."""
    cutoff = time.time() - grace_s
    with db.read() as session:
        rows = session.execute(select(Vm.name, Vm.spec, Vm.host_id, Vm.moving_to)
                               .where(Vm.state == vm_states.MOVING)).all()
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
                                          target_id, hosts.get(target_id),
                                          moves.target_op(spec))
    return outcomes


def _settle_move(db, client_for, name, source, target_id, target, target_op):
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
    if target is not None and (on_target is not None or target_op is not None):
        try:   # undefine it there, or cancel its define if that is still on its way
            delete_on_agent(client_for(target), name, target_op)   # never delete_storage
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
    """The VM as its agent has it, or None when it has none (ApiError otherwise). Never
    deletes anything: only a delete naming its operation may (the name may be re-used)."""
    try:
        return agent.vm(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
    return None
