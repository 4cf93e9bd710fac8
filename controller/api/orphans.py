"""Orphans: domains on agents the controller has no record of (controller.orphans)."""

from flask import Blueprint, jsonify
from pydantic import Field, field_validator

from controller import orphans
from controller.api.schemas import check_path_ids
from controller.services import current, require_admin
from hostplane.api import describe, parse_body
from hostplane.bodies import StrictBody
from hostplane.core.ids import check_name
from hostplane.errors import BadRequest

bp = Blueprint("orphans", __name__)
check_path_ids(bp, "domain name")


class OrphanAdopt(StrictBody):
    tenant: str | None = Field(default=None, description="the tenant the VM will belong to")

    _tenant = field_validator("tenant")(
        lambda v: v if v is None else check_name(v, "tenant"))


@bp.get("/v1/orphans")
@describe("Domains on agents that the controller has no record of, with the devices they "
          "hold, and the hosts that could not be asked", responses=(200, 403), tags=["vms"])
def listing():
    require_admin("orphans")
    return jsonify(orphans.listing(current()))


@bp.post("/v1/orphans/<host_id>/<name>/adopt")
@describe("Make an orphan domain a VM of the controller, holding its devices",
          body=OrphanAdopt, responses=(201, 403, 409, 503), tags=["vms"])
def adopt(host_id, name):
    require_admin("orphans")
    body = parse_body(OrphanAdopt, allow_empty=True)
    ctl = current()
    if body.tenant is not None and body.tenant not in ctl.config["tenants"]:
        raise BadRequest(f"tenant: no tenant {body.tenant} is configured", code="invalid_request",
                         details={"tenants": sorted(ctl.config["tenants"])})
    return jsonify(orphans.adopt(ctl, host_id, name, body.tenant)), 201


@bp.delete("/v1/orphans/<host_id>/<name>")
@describe("Destroy and undefine an orphan domain (disk files are kept)",
          responses=(204, 403, 409, 503), tags=["vms"])
def delete(host_id, name):
    require_admin("orphans")
    orphans.delete(current(), host_id, name)
    return "", 204
