"""What the agent and the controller do the same way: load config, build the app
skeleton (errors, auth, metrics, body limit), publish /metrics and the OpenAPI
description, and hand themselves to gunicorn.
"""

import os
import sys

from flask import Blueprint, Flask, current_app, jsonify

from hostplane import __version__, auth
from hostplane.api import describe, openapi_document
from hostplane.config import load_config
from hostplane.errors import register_error_handlers
from hostplane.metrics import install_request_metrics, metrics_response


def load_service_config(defaults, default_path, path_variable, path=None, environ=None,
                        overrides=None):
    """Defaults, then the file (`path`, `$path_variable` or `default_path`), then env."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(path_variable) or default_path
    config = load_config(defaults, path, environ)
    for section, values in (overrides or {}).items():
        config[section].update(values)
    return config


def base_app(name, config, resolve, public, metrics_prefix):
    """A Flask app with the envelope, bearer auth and request metrics installed.

    `public` names endpoints open without a token; metrics joins them unless
    `[server] metrics_token` asks for protection.
    """
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = config["server"]["max_body_kb"] * 1024
    app.json.sort_keys = False
    register_error_handlers(app)
    public = set(public) | {"meta.metrics"}
    if config["server"]["metrics_token"]:
        public.discard("meta.metrics")
    app.extensions["public_endpoints"] = public
    auth.install(app, resolve, public=public)
    registry = install_request_metrics(app, metrics_prefix)
    return app, registry


def optional_modules(*modules):
    """Blueprint modules of slices a trimmed install may lack; other import errors raise.

    Each has `bp` and may name endpoints open without a token in `PUBLIC_ENDPOINTS`.
    """
    found = []
    for module in modules:
        try:
            found.append(__import__(module, fromlist=["bp"]))
        except ImportError as exc:
            if exc.name != module:
                raise
    return found


def public_endpoints(modules):
    return {name for module in modules for name in getattr(module, "PUBLIC_ENDPOINTS", ())}


def meta_blueprint(title):
    """`/metrics` and `/v1/openapi.json`, as blueprint "meta" (services add their health)."""
    bp = Blueprint("meta", __name__)

    @bp.get("/metrics")
    @describe("Prometheus metrics (text format)", tags=["meta"])
    def metrics():
        return metrics_response(current_app.extensions["metrics_registry"])

    @bp.get("/v1/openapi.json")
    @describe("This API's OpenAPI 3 description", tags=["meta"])
    def openapi():
        return jsonify(openapi_document(current_app, title, __version__,
                                        public=current_app.extensions["public_endpoints"]))

    return bp


def exec_gunicorn(server, app_spec, config_variable, config_path=None, bind=None, threads=1):
    """Replace this process with gunicorn serving `app_spec` per `[server]`."""
    command = [sys.executable, "-m", "gunicorn", "--bind", bind or server["bind"],
               "--workers", str(server["workers"]), "--access-logfile", "-",
               "--graceful-timeout", "30"]
    if threads > 1:
        command += ["--threads", str(threads)]
    if server.get("tls_cert"):
        command += ["--certfile", server["tls_cert"], "--keyfile", server["tls_key"]]
    command.append(app_spec)
    if config_path:
        os.environ[config_variable] = os.path.abspath(config_path)
    os.execv(sys.executable, command)
