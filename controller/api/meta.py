"""Health, Prometheus metrics and the OpenAPI description generated from the routes."""

from flask import jsonify

from controller.services import current
from hostplane import __version__
from hostplane.api import describe
from hostplane.service import meta_blueprint

bp = meta_blueprint("hostplane controller")
PUBLIC_ENDPOINTS = ("meta.health",)


@bp.get("/v1/health")
@describe("Controller liveness and database reachability (no token needed)", tags=["meta"])
def health():
    try:
        current().db.ping()
        database = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - health reports, never fails
        database = {"ok": False, "error": type(exc).__name__}
    return jsonify({"status": "ok" if database["ok"] else "degraded", "version": __version__,
                    "database": database})
