"""A host's two states as the controller keeps them, changed only here.

`status` is what the poller found (connecting → connected ⇄ disconnected); `state` is what
an admin chose (enabled, disabled, maintenance). Functions take any object with those
attributes (SQLAlchemy rows included) and change it in place.
"""

CONNECTING, CONNECTED, DISCONNECTED = "connecting", "connected", "disconnected"
ENABLED, DISABLED, MAINTENANCE = "enabled", "disabled", "maintenance"
ADMIN_STATES = (ENABLED, DISABLED, MAINTENANCE)


def answered(host):
    """Its agent answered a poll: connected, the failure count starts again."""
    host.status, host.failures, host.last_error = CONNECTED, 0, None


def poll_failed(host, message, max_failures):
    """One more failed poll; disconnected after `max_failures` in a row."""
    host.failures = (host.failures or 0) + 1
    host.last_error = message[:500]
    if host.failures >= max_failures:
        host.status = DISCONNECTED


def set_admin_state(host, state):
    if state not in ADMIN_STATES:
        raise ValueError(f"host state must be one of {', '.join(ADMIN_STATES)}")
    host.state = state
