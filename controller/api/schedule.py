"""`POST /v1/schedule/explain`: what `POST /v1/vms` would do with this body, changing nothing."""

from flask import Blueprint, jsonify

from controller.api.schemas import VmCreate
from controller.placement import explain as run_placement, install_metrics
from controller.services import current, tenant
from hostplane.api import describe, parse_body

bp = Blueprint("schedule", __name__)
bp.record_once(lambda setup: install_metrics(setup.app))


@bp.post("/v1/schedule/explain")
@describe("Ranked candidate hosts and every rejected host with its reasons", body=VmCreate,
          tags=["schedule"])
def explain():
    body = parse_body(VmCreate)
    ctl = current()
    placement = run_placement(ctl.db, body.placement(tenant()), ctl.policy)
    return jsonify({
        "chosen": placement.chosen.host_id if placement.chosen else None,
        "candidates": [{"host": c.host_id, "score": round(c.score, 4),
                        "devices": [{"type": kind, "id": device_id}
                                    for kind, device_id in c.devices]}
                       for c in placement.ranked],
        "rejected": {host_id: list(reasons)
                     for host_id, reasons in sorted(placement.rejected.items())},
    })
