"""Prometheus metrics and the OpenAPI description generated from the routes."""

from hostplane.service import meta_blueprint

bp = meta_blueprint("hostplane agent")
