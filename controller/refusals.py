"""Refusals as callers read them, and as metrics count them.

Reasons come from the scheduler with their codes (hostplane.core.reasons); here they become
the API's `details.hosts` / `details.reasons`, a tenant's redacted view (names of VMs that
are not its own hidden, codes kept), and the scheduler counters by operation and by code.
"""

import re

from flask import current_app, has_app_context
from sqlalchemy import select

from controller.db.models import Vm
from hostplane.core.reasons import Reason, as_records, code_of
from hostplane.errors import Conflict, Unplaceable
from hostplane.metrics import counter

_HOLDER = re.compile(r"(attached to (?:VM )?|held by (?:VM )?|which VM )"
                     r"([A-Za-z0-9][A-Za-z0-9_.-]{0,62})")

_HOLDER_DETAILS = ("vm", "vms", "holder", "conflicts", "agent")
# what an agent's message may say of its host: URIs (libvirt's, the agent's) and paths
_INTERNALS = re.compile(r"\b[a-z][a-z0-9+.-]*://\S*|(?<![\w.:])/(?:[\w.-]+/)+[\w.-]*")



def install_metrics(app):
    """Scheduler counters in `app`'s registry; placement code outside an app counts nothing."""
    app.extensions["hostplane_scheduler_metrics"] = (
        counter(app, "hostplane_controller_scheduler_decisions",
                "Scheduler decisions by operation (explain, create, attach) and outcome "
                "(placed, refused, contended)", ["operation", "outcome"]),
        counter(app, "hostplane_controller_scheduler_refusals",
                "Refused placements by reason code (each code present counts once)",
                ["reason"]))


def count(operation, placement, outcome=None):
    metrics = (current_app.extensions.get("hostplane_scheduler_metrics")
               if has_app_context() else None)
    if metrics is None:
        return
    decisions, refusals = metrics
    if outcome is None:
        outcome = "placed" if placement.chosen is not None else "refused"
    decisions.labels(operation, outcome).inc()
    if outcome == "refused":
        for code in reason_codes(placement.rejected.values()):
            refusals.labels(code).inc()


def reason_codes(reason_lists):
    """The codes among per-host reasons; hosts rejected alike share one tuple, so
    distinct tuples are few even over ten thousand hosts."""
    return sorted({code_of(reason)
                   for reasons in {id(reasons): reasons for reasons in reason_lists}.values()
                   for reason in reasons})


def rejected_for(db, tenant, rejected):
    """{host: [reasons]} as `tenant` may read them: a device held by a VM that is not the
    tenant's own is "attached to another VM" (the admin reads every name); codes are kept."""
    hosts = {host_id: list(reasons) for host_id, reasons in sorted(rejected.items())}
    if tenant is None or not hosts:
        return hosts
    hide = _hider(db, tenant)
    return {host_id: [_reworded(reason, hide(reason)) for reason in reasons]
            for host_id, reasons in hosts.items()}


def _reworded(reason, message):
    return reason.reworded(message) if isinstance(reason, Reason) else message


def refusal_details(hosts):
    """The API's per-host refusal: sentences (`hosts`) and the same with codes (`reasons`)."""
    return {"hosts": hosts,
            "reasons": {host_id: as_records(reasons) for host_id, reasons in hosts.items()}}


def error_for(db, tenant, error):
    """An agent's refusal as `tenant` may read it: holders' names that are not its own
    VMs' are hidden in the message and dropped from the details, and so are the agent's
    address, URIs and paths of its host. Applied to every agent error a tenant gets
    (controller.app); an admin reads all of it."""
    if tenant is None:
        return error
    error.message = _INTERNALS.sub("[host detail]", _hider(db, tenant)(error.message))
    error.details = {k: v for k, v in error.details.items() if k not in _HOLDER_DETAILS}
    error.args = (error.message,)
    return error


def _hider(db, tenant):
    with db.read() as session:
        own = set(session.scalars(select(Vm.name).where(Vm.tenant == tenant)))

    def hide(match):
        return match.group(0) if match.group(2) in own else match.group(1) + "another VM"
    return lambda text: _HOLDER.sub(hide, text)


def unplaceable(request, placement, db):
    """422 for a VM that fits nowhere; 409 when an existing VM cannot take the devices
    (they are elsewhere or held): the VM is placed, the request conflicts with it."""
    hosts = rejected_for(db, request.tenant, placement.rejected)
    if request.existing_vm is not None:
        vm_host = request.existing_vm.host_id
        why = "; ".join(hosts.get(vm_host, [])) or "no host can take these devices"
        return Conflict(f"{request.name} on {vm_host} cannot take these devices: {why}",
                        code="device_not_attachable", details=refusal_details(hosts))
    if not hosts:
        message = "no hosts are registered"
    else:
        message = f"{request.name} fits on none of {len(hosts)} hosts"
    return Unplaceable(message, code="unplaceable", details=refusal_details(hosts))

