"""`POST /v1/schedule/explain`: what `POST /v1/vms` would do with this body, changing nothing."""

from flask import Blueprint, jsonify

from controller.api.schemas import VmCreate
from controller.placement import explain as run_placement
from controller.refusals import install_metrics, refusal_details, rejected_for
from controller.pool_claims import quota_exceeded
from controller.pools import pool_asks, quotas
from controller.services import current, require_admin, tenant
from hostplane.api import describe, parse_body

bp = Blueprint("schedule", __name__)
bp.record_once(lambda setup: install_metrics(setup.app))


@bp.post("/v1/schedule/explain")
@describe("Ranked candidate hosts and every rejected host with its reasons: `rejected` "
          "{host: [sentence]} and `reasons` {host: [{code, message}]} (codes: see the "
          "controller docs); for a tenant, `quotas` per asked pool, and when a host "
          "fits but a quota is exceeded, `chosen` is null and `refused` is the 403 the "
          "create would get",
          body=VmCreate,
          responses=(200, 403, 404),
          tags=["schedule"])
def explain():
    body = parse_body(VmCreate)
    if body.usb:   # the same answer whether the USB device exists or not
        require_admin("USB passthrough")
    ctl = current()
    asks = pool_asks(body.devices)
    placement = run_placement(ctl.db, body.placement(tenant(), ctl.strategy, asks), ctl.policy)
    refusals = refusal_details(rejected_for(ctl.db, tenant(), placement.rejected))
    quota = quotas(asks)   # a tenant's pools: an exceeded one makes the create 403
    # it would fit, but the create would be refused there: past a quota (when nothing
    # fits, the create answers 422 first, as explain's rejected hosts say)
    over = [quota_exceeded({key: q[key] for key in ("pool", "used", "asked", "limit")})
            for q in quota if q["exceeded"]] if placement.chosen else []
    return jsonify({
        "chosen": placement.chosen.host_id if placement.chosen and not over else None,
        **({"refused": {"code": over[0].code, "message": over[0].message,
                        "details": over[0].details}} if over else {}),
        "candidates": [{"host": c.host_id, "score": round(c.score, 4),
                        "devices": [{"type": kind, "id": device_id}
                                    for kind, device_id in c.devices],
                        **({"numa_node": c.numa_node} if c.numa_node is not None else {}),
                        **({"found": c.found} if c.found else {})}
                       for c in placement.ranked],
        "rejected": refusals["hosts"],
        "reasons": refusals["reasons"],
        "quotas": quota,
    })
