"""Controller configuration: defaults, file, environment (see INTERFACE.md).

TLS as on the agent: `[server] tls_cert`/`tls_key` make gunicorn serve HTTPS,
`require_tls` refuses clear text; `[agents] ca` is the CA bundle https agents are
verified against (empty: the system's trust store); `require_agent_tls` refuses to
register an agent by an http:// URL (its token would cross the network in clear).
"""

from hostplane.config import ConfigError
from hostplane.service import check_ca_bundle, check_tls, load_service_config

DEFAULT_PATH = "/etc/hostplane/controller.toml"
DEFAULTS = {
    "server": {"bind": "0.0.0.0:7080", "insecure": False, "workers": 2, "max_body_kb": 256,
               "admin_token": "",  # nosec B105 - empty: serving without one is refused
               "metrics_token": False,  # nosec B105 - a switch, not a token
               "tls_cert": "", "tls_key": "", "require_tls": False, "require_agent_tls": False},
    "tenants": {},
    "agents": {"ca": "", "operation_timeout_s": 0.0},   # 0: 6 x [poll] timeout_s
    "database": {"url": "sqlite:////var/lib/hostplane/controller.db", "pool_size": 5,
                 "busy_timeout_s": 30.0, "connect_timeout_s": 5},
    "poll": {"interval_s": 10, "timeout_s": 5, "max_failures": 3, "concurrency": 32,
             "jitter_s": 1.0, "enabled": True},
    "scheduler": {"cpu_overcommit": 4.0, "memory_overcommit": 1.0, "strategy": "least-cpu",
                  "strategy_mode": "preferred", "claim_attempts": 5, "tie_break": "spread"},
}


def load_controller_config(path=None, environ=None, overrides=None):
    return load_service_config(DEFAULTS, DEFAULT_PATH, "HOSTPLANE_CONTROLLER_CONFIG", path,
                               environ, overrides)


def check_serving_config(config):
    """Raise ConfigError with the one-line reason the controller must not serve."""
    server = config["server"]
    if not server["admin_token"] and not server["insecure"]:
        raise ConfigError("no admin token: set [server] admin_token in "
                          "/etc/hostplane/controller.toml or HOSTPLANE_SERVER_ADMIN_TOKEN "
                          "(or insecure = true for a lab)")
    seen = {server["admin_token"]: "the admin token"} if server["admin_token"] else {}
    for name, token in config["tenants"].items():
        if not isinstance(token, str) or len(token) < 8:
            raise ConfigError(f"[tenants] {name}: token must be a string of 8+ characters")
        if token in seen:   # one token, two principals: whoever holds it is both
            raise ConfigError(f"[tenants] {name}: its token is the same as {seen[token]}; "
                              "every tenant needs a token of its own")
        seen[token] = f"tenant {name}'s"
    check_tls(server)
    check_ca_bundle(config["agents"]["ca"], "[agents] ca")


def principals(config):
    """{token: principal}: `admin` or `tenant:<name>`."""
    found = {token: f"tenant:{name}" for name, token in config["tenants"].items()}
    if config["server"]["admin_token"]:
        found[config["server"]["admin_token"]] = "admin"
    return found
