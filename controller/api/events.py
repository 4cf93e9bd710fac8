"""Agents' "devices changed" events: authenticated with that agent's own token, answered by
an immediate fetch of the host (the event says when, never what)."""

from flask import Blueprint, g, jsonify
from pydantic import Field

from controller.services import current
from hostplane.api import describe, parse_body
from hostplane.bodies import StrictBody
from hostplane.errors import Forbidden

bp = Blueprint("events", __name__)


class HostEvent(StrictBody):
    host_id: str = Field(min_length=1, max_length=128)
    boot_id: str | None = Field(default=None, max_length=64)
    generation: int | None = None
    reason: str | None = Field(default=None, max_length=500)


@bp.post("/v1/hosts/<host_id>/events")
@describe("An agent says its devices changed (agent token)", body=HostEvent,
          responses=(202, 403), tags=["hosts"])
def event(host_id):
    body = parse_body(HostEvent)
    if g.principal != f"agent:{host_id}" and g.principal != "admin":
        raise Forbidden("only the host's own agent (or the admin) sends its events",
                        code="not_this_host")
    if body.host_id != host_id:
        raise Forbidden("event names another host", code="not_this_host")
    outcome = current().poller.fetch_now(host_id, event=body.model_dump())
    return jsonify({"accepted": True, "host_id": host_id, "fetch": outcome}), 202
