"""The agent's Flask application factory, for gunicorn and tests alike.

    gunicorn 'agent.app:create_app()'

reads /etc/hostplane/agent.toml (or HOSTPLANE_AGENT_CONFIG) plus HOSTPLANE_* variables.
"""

from flask import Flask
from prometheus_client.core import GaugeMetricFamily

from agent.api import devices, health, host, meta
from agent.config import check_serving_config, load_agent_config
from agent.services import Agent
from hostplane import auth
from hostplane.errors import register_error_handlers
from hostplane.metrics import install_request_metrics

BLUEPRINTS = [health.bp, host.bp, devices.bp, meta.bp]


def _optional_blueprints():
    """Blueprints of slices that may be absent from a trimmed install."""
    found = []
    for module in ("agent.api.vms", "agent.api.networks"):
        try:
            found.append(__import__(module, fromlist=["bp"]).bp)
        except ImportError as exc:
            if exc.name != module:
                raise
    return found


def create_app(config=None, start=True):
    """Build the app; `config` is a loaded dict (tests) or None to load from disk/env."""
    if config is None:
        config = load_agent_config()
    check_serving_config(config)
    app = Flask("hostplane-agent")
    app.config["MAX_CONTENT_LENGTH"] = config["server"]["max_body_kb"] * 1024
    app.json.sort_keys = False
    agent = Agent(config)
    app.extensions["hostplane_agent"] = agent
    register_error_handlers(app)
    public = set(meta.PUBLIC_ENDPOINTS)
    if config["server"]["metrics_token"]:
        public.discard("meta.metrics")
    app.extensions["public_endpoints"] = public
    token = config["server"]["token"]
    insecure = config["server"]["insecure"] and not token
    auth.install(app, lambda given: "agent" if insecure or auth.token_matches(given, token)
                 else None, public=public)
    registry = install_request_metrics(app, "hostplane_agent")
    registry.register(_InventoryCollector(agent))
    for blueprint in BLUEPRINTS + _optional_blueprints():
        app.register_blueprint(blueprint)
    if start:
        agent.start()
    return app


class _InventoryCollector:
    """Devices by kind/type/status, read from the inventory at scrape time."""

    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        family = GaugeMetricFamily("hostplane_agent_devices", "Devices on this host",
                                   labels=["kind", "type", "status"])
        for (kind, kind_type, status), count in sorted(self.agent.inventory.counts().items()):
            family.add_metric([kind, kind_type, status], count)
        yield family
        generation = GaugeMetricFamily("hostplane_agent_inventory_generation",
                                       "Inventory generation")
        generation.add_metric([], self.agent.inventory.generation)
        yield generation
