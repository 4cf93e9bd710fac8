"""The controller's Flask application factory, for gunicorn and tests alike.

    gunicorn 'controller.app:create_app()'

reads /etc/hostplane/controller.toml (or HOSTPLANE_CONTROLLER_CONFIG) plus HOSTPLANE_*
variables. A SQLite schema is brought up to date here; a PostgreSQL one must already be
current (`hostplane-controller db upgrade`), or the app refuses to start.
"""

import logging

from flask import request
from sqlalchemy.exc import (InterfaceError, OperationalError, ProgrammingError,
                            TimeoutError as PoolTimeout)

from controller.api import (dashboard, devices, events, hosts, meta, networks, orphans,
                            pools, schedule, vms)
from controller.config import check_serving_config, load_controller_config, principals
from controller.db import upgrade
from controller.db.models import Host
from controller.db.schema import ensure_schema
from controller.gauges import InventoryCollector
from controller.refusals import error_for
from controller.services import Controller, current, tenant
from hostplane import auth
from hostplane.core.ids import HOST_ID
from hostplane.core.device_states import IllegalTransition
from hostplane.core.vm_states import IllegalVmTransition
from hostplane.errors import ApiError, DatabaseUnavailable, envelope
from hostplane.service import base_app, public_endpoints

MODULES = [meta, hosts, devices, vms, orphans, schedule, events, networks, pools, dashboard]
log = logging.getLogger(__name__)


def create_app(config=None, start=True):
    """Build the app; `config` is a loaded dict (tests) or None to load from disk/env."""
    if config is None:
        config = load_controller_config()
    check_serving_config(config)
    ensure_schema(config["database"]["url"], upgrade)
    insecure = config["server"]["insecure"] and not config["server"]["admin_token"]
    tokens = principals(config)
    app, registry = base_app(
        "hostplane-controller", config,
        lambda given: "admin" if insecure else _resolve(tokens, given),
        public_endpoints(MODULES), "hostplane_controller")
    controller = Controller(config)
    app.extensions["hostplane_controller"] = controller

    @app.errorhandler(ApiError)
    def _api_error(exc):   # an agent's answer reaches a tenant without the host's details
        if "agent" in exc.details and tenant() is not None:
            exc = error_for(controller.db, tenant(), exc)
        return envelope(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(IllegalTransition)
    def _illegal(exc):   # a claim that lost a race the scheduler could not see
        return envelope(409, "device_busy", str(exc), {"device": exc.device_id})

    @app.errorhandler(IllegalVmTransition)
    def _vm_busy(exc):   # an operation of this VM is still with its agent
        return envelope(409, "vm_busy", f"{exc}; try again when it settles",
                        {"vm": exc.name, "state": exc.state})

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeout)
    def _database_down(exc):
        """Locked past the busy timeout, refused, gone: the caller may retry, so 503.
        (Integrity and programming errors are bugs and stay a logged 500.)"""
        if _schema_missing(exc):
            return _schema_missing_answer()
        log.warning("database unavailable: %s", getattr(exc, "orig", None) or exc)
        error = DatabaseUnavailable("the controller's database is unavailable (locked or "
                                    "unreachable); retry shortly",
                                    details={"retry_after_s": DatabaseUnavailable.retry_after_s})
        response = envelope(error.status, error.code, error.message, error.details)
        response.headers["Retry-After"] = str(error.retry_after_s)
        return response

    @app.errorhandler(ProgrammingError)
    def _programming_error(exc):
        if _schema_missing(exc):
            return _schema_missing_answer()
        log.exception("database programming error")   # a bug: the ordinary 500
        return envelope(500, "internal_error", "internal error; see the service log")

    registry.register(InventoryCollector(controller))
    controller.poller.install_metrics(app)
    for module in MODULES:
        app.register_blueprint(module.bp)
    if start and config["poll"]["enabled"]:
        controller.poller.start()
    return app


def _schema_missing(exc):
    """A table this code reads is not there (dropped, or an old database behind it)."""
    text = str(getattr(exc, "orig", None) or exc)
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def _schema_missing_answer():
    log.error("the database has no schema (or an old one)")
    return envelope(503, "schema_missing", "the controller's database has no schema (or an "
                    "old one): run 'hostplane-controller db upgrade'", {})


def _resolve(tokens, given):
    """Admin or tenant token; on a host's events endpoint, also that host's agent token."""
    principal = auth.find_principal(given, tokens)
    host_id = (request.view_args or {}).get("host_id")
    if (principal is None and request.endpoint == "events.event" and given
            and isinstance(host_id, str) and HOST_ID.fullmatch(host_id)):
        with current().db.read() as session:
            host = session.get(Host, host_id)
        if host is not None and auth.token_matches(given, host.token):
            principal = f"agent:{host_id}"
    return principal

