"""Settles VMs a controller process left in `creating` when it died between claim and
the agent's answer, so no reservation outlives the process that made it.

A create claims (VM row `creating`, devices `attached`) and then asks the agent. If the
process is killed in between, nobody would ever finish or undo it. Once a claim is older
than the longest the create path waits for its agent (`grace_s`), the agent is asked:
the VM exists there → the row takes the agent's state (completed); the agent says 404 →
the claim is released and the row dropped; the agent is unreachable → left for a later
cycle, since only the agent knows. Every controller process may run this at once: each
decision is re-checked under the row's write lock, so the first one wins and the others
find the VM no longer `creating`.
"""

import logging
from datetime import timedelta

from sqlalchemy import select

from controller.db.models import Device, Host, Vm, utcnow
from hostplane.core import device_states
from hostplane.errors import ApiError

log = logging.getLogger(__name__)


def settle_abandoned_creates(db, client_for, grace_s):
    """Finish or release every `creating` VM older than `grace_s`; {name: outcome}."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    with db.read() as session:
        stale = session.execute(
            select(Vm.name, Host).outerjoin(Host, Vm.host_id == Host.id)
            .where(Vm.state == "creating", Vm.created_at < cutoff)).all()
    return {name: _settle(db, client_for, name, host) for name, host in stale}


def _settle(db, client_for, name, host):
    try:
        found = _on_agent(client_for(host), name) if host is not None else None
    except ApiError as exc:
        log.info("VM %s: left creating, agent not answering (%s)", name, exc.message)
        return "unknown"
    with db.write() as session:
        vm = session.scalars(db.locked(select(Vm).where(Vm.name == name))).first()
        if vm is None or vm.state != "creating":
            return "settled elsewhere"
        if found is not None:
            vm.state = found.get("state") or "stopped"
            log.warning("VM %s: create completed after its controller died", name)
            return "completed"
        for device in session.scalars(db.locked(select(Device).where(Device.vm == name))):
            if device.status == "attached":
                device_states.release(device, name)
            else:
                device.vm = None
        session.delete(vm)
    log.warning("VM %s: abandoned create released", name)
    return "released"


def _on_agent(agent, name):
    """The VM as its agent has it, or None once the agent has none (ApiError otherwise)."""
    try:
        return agent.vm(name)
    except ApiError as exc:
        if exc.status != 404:
            raise
    agent.delete_vm(name)   # idempotent: nothing half-made may stay behind
    return None
