"""Liveness and identity: the controller notices a restarted agent by its boot id."""

from flask import Blueprint, jsonify

from agent.services import current_agent
from hostplane.api import describe

bp = Blueprint("health", __name__)
PUBLIC_ENDPOINTS = ("health.health",)


@bp.get("/v1/health")
@describe("Agent liveness, identity and libvirt reachability (no token needed)", tags=["host"])
def health():
    agent = current_agent()
    libvirt_status = agent.libvirt_status()
    return jsonify({
        "status": "ok" if libvirt_status.get("ok") else "degraded",
        "host_id": agent.host_id,
        "boot_id": agent.boot_id,
        "version": agent.version,
        "generation": agent.inventory.generation,
        "libvirt": {key: libvirt_status.get(key) for key in ("ok", "uri", "version", "error")},
    })
