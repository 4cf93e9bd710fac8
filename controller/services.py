"""The controller's parts wired together, one per process; views reach it by `current()`."""

from flask import current_app, g

from controller.agents import AgentClient
from controller.db import Database
from controller.placement import policy_from, strategy_from
from controller.poller import Poller
from hostplane.errors import Forbidden


class Controller:
    def __init__(self, config, client_factory=AgentClient):
        self.config = config
        database = config["database"]
        self.db = Database(database["url"], database["busy_timeout_s"], database["pool_size"],
                           database["connect_timeout_s"])
        self.policy = policy_from(config)
        self.strategy = strategy_from(config)   # for requests that name none
        self.poller = Poller(self.db, config["poll"], client_factory)
        # every agent call shares the poller's keep-alive pool, verifying against [agents] ca
        # (which REQUESTS_CA_BUNDLE in the environment would silently override otherwise)
        if config["agents"]["ca"]:
            self.poller.session.verify = config["agents"]["ca"]
            self.poller.session.trust_env = False
        self.client_factory = lambda url, token, timeout=5.0, session=None: client_factory(
            url, token, timeout=timeout, session=session or self.poller.session)

    def agent(self, host):
        return self.client_factory(host.url, host.token, timeout=self.agent_call_s())

    def network_agents(self):
        """How network pushes reach agents: a client per host, and as many at once as
        the poller polls (`[poll] concurrency`)."""
        timeout = float(self.config["poll"]["timeout_s"])
        return {"client_for": lambda host: self.client_factory(host.url, host.token,
                                                                timeout=timeout),
                "concurrency": int(self.config["poll"]["concurrency"])}

    def agent_call_s(self):
        """The longest one agent call of a VM operation may wait for its answer."""
        return float(self.config["poll"]["timeout_s"]) * 6

    def close(self):
        self.poller.stop()
        self.db.close()


def current():
    return current_app.extensions["hostplane_controller"]


# --- who is asking ---------------------------------------------------------------------
def tenant():
    """The calling tenant's name, or None for the admin."""
    principal = g.principal
    return principal.split(":", 1)[1] if principal.startswith("tenant:") else None


def require_admin(what):
    if tenant() is not None:
        raise Forbidden(f"{what} is admin-only", code="admin_only")
