"""Prometheus metrics and the OpenAPI description generated from the routes."""

from flask import Blueprint, current_app, jsonify

from hostplane.api import describe, openapi_document
from hostplane.metrics import metrics_response

bp = Blueprint("meta", __name__)
PUBLIC_ENDPOINTS = ("health.health", "meta.metrics")


@bp.get("/metrics")
@describe("Prometheus metrics (text format)", tags=["meta"])
def metrics():
    return metrics_response(current_app.extensions["metrics_registry"])


@bp.get("/v1/openapi.json")
@describe("This API's OpenAPI 3 description", tags=["meta"])
def openapi():
    from hostplane import __version__
    return jsonify(openapi_document(current_app, "hostplane agent", __version__,
                                    public=current_app.extensions["public_endpoints"]))
