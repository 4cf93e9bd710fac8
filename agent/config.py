"""Agent configuration: defaults, file, environment (see INTERFACE.md).

`[host] controller_ca` is the CA bundle an https `controller_url` is verified against
when events are pushed (empty: the system's trust store).
"""

from hostplane.config import ConfigError
from hostplane.core.ids import InvalidId, check_host_id
from hostplane.core.pci import DEFAULT_CRITICAL_DRIVERS
from hostplane.service import check_ca_bundle, check_tls, load_service_config

DEFAULT_PATH = "/etc/hostplane/agent.toml"
DEFAULTS = {
    "server": {"bind": "0.0.0.0:7070", "token": "", "insecure": False, "tls_cert": "",
               "tls_key": "", "require_tls": False, "workers": 2, "max_body_kb": 256,
               "metrics_token": False},
    "libvirt": {"uri": "qemu:///system", "detach_timeout_s": 10.0, "stop_timeout_s": 60.0,
                "storage_dir": "/var/lib/hostplane/images", "domain_prefix": ""},
    "host": {"id": "", "controller_url": "", "controller_ca": "", "sysfs_root": "/sys",
             "proc_root": "/proc", "state_dir": "/var/lib/hostplane", "watch_udev": True,
             "critical_drivers": list(DEFAULT_CRITICAL_DRIVERS), "pci_ids": ""},
    "network": {"netns": ""},
}


def load_agent_config(path=None, environ=None, overrides=None):
    return load_service_config(DEFAULTS, DEFAULT_PATH, "HOSTPLANE_AGENT_CONFIG", path, environ,
                               overrides)


def check_serving_config(config):
    """Raise ConfigError with the one-line reason the agent must not serve."""
    server = config["server"]
    if not server["token"] and not server["insecure"]:
        raise ConfigError("no API token: set [server] token in /etc/hostplane/agent.toml or "
                          "HOSTPLANE_SERVER_TOKEN (or insecure = true for a lab)")
    check_tls(server)
    check_ca_bundle(config["host"]["controller_ca"], "[host] controller_ca")


def host_id(config):
    """`[host] id`, else /etc/machine-id: stable across agent restarts."""
    if config["host"]["id"]:
        return _checked_host_id(config["host"]["id"], "[host] id")
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii") as handle:
                value = handle.read().strip()
            if value:
                return _checked_host_id(value, path)
        except OSError:
            continue
    raise ConfigError("no host id: set [host] id or HOSTPLANE_HOST_ID (no /etc/machine-id)")


def _checked_host_id(value, source):
    """The controller refuses a host id it cannot put in a path; fail here, at start."""
    try:
        return check_host_id(value)
    except InvalidId as exc:
        raise ConfigError(f"{source}: {exc}") from None
