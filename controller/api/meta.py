"""Health, Prometheus metrics and the OpenAPI description generated from the routes."""

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from controller.services import current
from hostplane import __version__
from hostplane.api import describe, openapi_document
from hostplane.metrics import metrics_response

bp = Blueprint("meta", __name__)
PUBLIC_ENDPOINTS = ("meta.health", "meta.metrics")


@bp.get("/v1/health")
@describe("Controller liveness and database reachability (no token needed)", tags=["meta"])
def health():
    try:
        with current().db.read() as session:
            session.execute(text("SELECT 1"))
        database = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - health reports, never fails
        database = {"ok": False, "error": type(exc).__name__}
    return jsonify({"status": "ok" if database["ok"] else "degraded", "version": __version__,
                    "database": database})


@bp.get("/metrics")
@describe("Prometheus metrics (text format)", tags=["meta"])
def metrics():
    return metrics_response(current_app.extensions["metrics_registry"])


@bp.get("/v1/openapi.json")
@describe("This API's OpenAPI 3 description", tags=["meta"])
def openapi():
    return jsonify(openapi_document(current_app, "hostplane controller", __version__,
                                    public=current_app.extensions["public_endpoints"]))
