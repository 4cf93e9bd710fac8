"""What the agent and the controller do the same way: load config, build the app
skeleton (errors, auth, TLS requirement, metrics, body limit), publish /metrics and the
OpenAPI description, and hand themselves to gunicorn (HTTPS when `[server] tls_cert`).
"""

import os
import sys

from hostplane import __version__
from hostplane.config import ConfigError, load_config
from hostplane.core.certificates import expiry_verdict, worst

# The web stack (Flask, werkzeug, pydantic, jinja2: most of a command's start-up time)
# is imported by the functions that build an app, so commands that only load the
# configuration (`hostplane-agent inventory`, `check`) start without it.


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
    from flask import Flask

    from hostplane import auth
    from hostplane.api import refuse_control_characters
    from hostplane.errors import register_error_handlers
    from hostplane.metrics import install_request_metrics
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = config["server"]["max_body_kb"] * 1024
    app.json.sort_keys = False
    register_error_handlers(app)
    public = set(public) | {"meta.metrics"}
    if config["server"]["metrics_token"]:
        public.discard("meta.metrics")
    app.extensions["public_endpoints"] = public
    auth.install(app, resolve, public=public)
    refuse_control_characters(app)   # first: before the token is looked up
    if config["server"].get("require_tls"):
        auth.require_tls(app)
    registry = install_request_metrics(app, metrics_prefix)
    return app, registry


def check_tls(server):
    """Raise ConfigError when `[server]` TLS settings cannot be served: half a pair,
    require_tls without a certificate, or a cert/key that do not load or do not match."""
    cert, key = server.get("tls_cert"), server.get("tls_key")
    if bool(cert) != bool(key):
        raise ConfigError("[server] tls_cert and tls_key must be given together")
    if server.get("require_tls") and not cert:
        raise ConfigError("[server] require_tls is set but no tls_cert/tls_key is configured")
    if cert:
        import ssl
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"[server] tls_cert {cert} / tls_key {key} cannot be served: "
                              f"{exc}") from None


def check_ca_bundle(path, what):
    """Raise ConfigError unless `path` (if set) holds CA certificates ssl can load."""
    if not path:
        return
    import ssl
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{what} {path} cannot be loaded: {exc}") from None


def certificate_expiry(path, now=None):
    """(status, sentence) for the certificate(s) in a PEM file, the soonest to expire
    deciding: a CA bundle is only as good as the certificate that runs out first."""
    import datetime

    from cryptography import x509
    now = now or datetime.datetime.now(datetime.timezone.utc)
    try:
        with open(path, "rb") as handle:
            certificates = x509.load_pem_x509_certificates(handle.read())
    except (OSError, ValueError) as exc:
        return "fail", f"{path} cannot be read as PEM certificates: {exc}"
    status, sentence = worst([expiry_verdict(certificate.not_valid_after_utc, now)
                              for certificate in certificates])
    return status, f"{path} {sentence}"


def certificate_checks(files, now=None):
    """[(label, status, sentence)] for each configured (label, path); unset paths skipped."""
    return [(label, *certificate_expiry(path, now)) for label, path in files if path]


RENEW_HINT = ("rerun the playbook (it renews certificates inside hostplane_tls_renew_days) "
              "or install a new certificate")


def public_endpoints(modules):
    return {name for module in modules for name in getattr(module, "PUBLIC_ENDPOINTS", ())}


def meta_blueprint(title):
    """`/metrics` and `/v1/openapi.json`, as blueprint "meta" (services add their health)."""
    from flask import Blueprint, current_app, jsonify

    from hostplane.api import describe, openapi_document
    from hostplane.metrics import metrics_response
    bp = Blueprint("meta", __name__)

    @bp.get("/metrics")
    @describe("Prometheus metrics (text format)", tags=["meta"], media_type="text/plain")
    def metrics():
        registry = current_app.extensions["metrics_registry"]
        directory = os.environ.get(MULTIPROC_VARIABLE)
        return metrics_response(_AllWorkers(registry, directory) if directory else registry)

    @bp.get("/v1/openapi.json")
    @describe("This API's OpenAPI 3 description", tags=["meta"])
    def openapi():
        return jsonify(openapi_document(current_app, title, __version__,
                                        public=current_app.extensions["public_endpoints"]))

    return bp


MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class _AllWorkers:
    """What /metrics shows under several gunicorn workers: counters and histograms summed
    over every worker's files (any worker may answer the scrape, and the poller's hosts
    are split among workers), plus this app's collectors that read shared state (the
    database) at scrape time."""

    def __init__(self, registry, directory):
        self.registry, self.directory = registry, directory

    def collect(self):
        from prometheus_client.multiprocess import MultiProcessCollector
        shared = list(MultiProcessCollector(None, path=self.directory).collect())
        names = {family.name for family in shared}
        yield from shared
        yield from (family for family in self.registry.collect() if family.name not in names)


def exec_gunicorn(server, app_spec, config_variable, config_path=None, bind=None, threads=1):
    """Replace this process with gunicorn serving `app_spec` per `[server]`.

    With several workers, prometheus-client's multiprocess mode is switched on in a fresh
    directory (each worker writes its samples there; `_AllWorkers` reads them all).
    """
    command = [sys.executable, "-m", "gunicorn", "--bind", bind or server["bind"],
               "--workers", str(server["workers"]), "--access-logfile", "-",
               "--graceful-timeout", "30",
               # No gunicornc control socket: nothing uses it, and under the units'
               # ProtectSystem its default path ($HOME/.gunicorn) is read-only.
               "--no-control-socket",
               # its own error answers (a request line too long...) as JSON, like the app's
               "--config", "python:hostplane.gunicorn_errors"]
    if threads > 1:
        command += ["--threads", str(threads)]
    if server.get("tls_cert"):
        command += ["--certfile", server["tls_cert"], "--keyfile", server["tls_key"]]
    command.append(app_spec)
    if int(server["workers"]) > 1 and not os.environ.get(MULTIPROC_VARIABLE):
        import tempfile
        os.environ[MULTIPROC_VARIABLE] = tempfile.mkdtemp(prefix="hostplane-metrics-")
    if config_path:
        os.environ[config_variable] = os.path.abspath(config_path)
    os.execv(sys.executable, command)  # nosec B606 - this interpreter, an argument list
