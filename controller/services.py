"""The controller's parts wired together, one per process; views reach it by `current()`."""

from flask import current_app, g

from controller.agents import Agents
from controller.db import Database
from controller.placement import policy_from, strategy_from, tie_break_from
from controller.placement_views import order_ties
from controller.poller import Poller
from hostplane.errors import Forbidden


class Controller:
    def __init__(self, config):
        self.config = config
        database = config["database"]
        self.db = Database(database["url"], database["busy_timeout_s"], database["pool_size"],
                           database["connect_timeout_s"])
        self.policy = policy_from(config)
        self.strategy = strategy_from(config)   # for requests that name none
        order_ties(tie_break_from(config))
        agents = config["agents"]
        self.agents = Agents(config["poll"], agents["ca"], agents["operation_timeout_s"])
        self.poller = Poller(self.db, config["poll"], self.agents)

    def agent(self, host):
        """A client for a VM operation on `host` (the longer of the two waits)."""
        return self.agents.of(host, operation=True)

    def network_agents(self):
        """How network pushes reach agents: a client per host, and as many at once as
        the poller polls (`[poll] concurrency`)."""
        return {"client_for": self.agents.of,
                "concurrency": int(self.config["poll"]["concurrency"])}

    def agent_call_s(self):
        """The longest one agent call of a VM operation may wait for its answer."""
        return self.agents.operation_s

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
