"""The agent's Flask application factory, for gunicorn and tests alike.

    gunicorn 'agent.app:create_app()'

reads /etc/hostplane/agent.toml (or HOSTPLANE_AGENT_CONFIG) plus HOSTPLANE_* variables.
"""

from prometheus_client.core import GaugeMetricFamily

from agent.api import devices, health, host, meta, networks, vms
from agent.config import check_serving_config, load_agent_config
from agent.services import Agent
from hostplane import auth
from hostplane.service import base_app, public_endpoints

MODULES = [health, host, devices, meta, vms, networks]


def create_app(config=None, start=True):
    """Build the app; `config` is a loaded dict (tests) or None to load from disk/env."""
    if config is None:
        config = load_agent_config()
    check_serving_config(config)
    token = config["server"]["token"]
    insecure = config["server"]["insecure"] and not token
    app, registry = base_app(
        "hostplane-agent", config,
        lambda given: "agent" if insecure or auth.token_matches(given, token) else None,
        public_endpoints(MODULES), "hostplane_agent")
    agent = Agent(config)
    app.extensions["hostplane_agent"] = agent
    registry.register(_InventoryCollector(agent))
    registry.register(_VirtCollector(agent))
    for module in MODULES:
        app.register_blueprint(module.bp)
    if start:
        agent.start()
    return app


class _VirtCollector:
    """Attach/detach latency, shared by the workers (the libvirt adapter may be absent),
    and whether libvirtd answers: 0 is what `/v1/health` reports as `degraded`."""

    def __init__(self, agent):
        self.agent = agent

    def collect(self):
        up = GaugeMetricFamily("hostplane_agent_libvirt_up",
                               "1 when libvirtd answers the agent (else /v1/health is degraded)")
        up.add_metric([], 1 if self.agent.libvirt_status().get("ok") else 0)
        yield up
        if self.agent.virt is not None:
            yield from self.agent.virt.latency.collect()


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
