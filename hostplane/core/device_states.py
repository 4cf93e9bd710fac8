"""The device state machine: every status change of a cluster device goes through here.

Like Nova's PCI device object, each transition checks the status it may start from and
raises `IllegalTransition` naming what was expected, so a racing claim or a stale caller
fails loudly instead of silently double-assigning a device. Functions take any object with
`id`, `status`, `vm` and `state` attributes (SQLAlchemy rows included) and change it in place.
"""

READY, ATTACHED, UNAVAILABLE = "ready", "attached", "unavailable"
# Present and free, but its agent says it cannot be passed through (a bridge, the host's
# root disk, the BMC console...): never `ready`, so nothing offers or claims it.
NOT_ASSIGNABLE = "not_assignable"
ENABLED, DISABLED = "enabled", "disabled"


class IllegalTransition(Exception):
    def __init__(self, device_id, status, expected, why=None):
        self.device_id, self.status, self.expected = device_id, status, tuple(expected)
        message = (f"device {device_id} is {status}, expected "
                   f"{' or '.join(self.expected)}")
        super().__init__(f"{message}: {why}" if why else message)


def claim(device, vm):
    """ready → attached to `vm`; only an enabled device is handed out."""
    _expect(device, (READY,))
    if device.vm is not None:
        raise IllegalTransition(device.id, device.status, (READY,), f"held by {device.vm}")
    if device.state != ENABLED:
        raise IllegalTransition(device.id, device.status, (READY,), "disabled by admin")
    device.status, device.vm = ATTACHED, vm


def release(device, vm):
    """attached to `vm` → ready (not_assignable if its agent says so now); releasing on
    behalf of another VM is refused."""
    _expect(device, (ATTACHED,))
    if device.vm != vm:
        raise IllegalTransition(device.id, device.status, (ATTACHED,),
                                f"held by {device.vm}, not {vm}")
    device.status, device.vm = _free_status(device), None


def hold(device, vm):
    """free → attached to `vm`, because its agent reports `vm`'s domain holds it (a fact
    found, not a claim handed out: a disabled or unassignable device can be held too)."""
    _expect(device, (READY, NOT_ASSIGNABLE))
    device.status, device.vm = ATTACHED, vm


def hold_outside(device):
    """free → attached to no VM the controller knows: a domain made behind its back (an
    orphan, named by the agent's report) holds it. Never offered, never shown as free."""
    _expect(device, (READY, NOT_ASSIGNABLE))
    device.status, device.vm = ATTACHED, None


def adopt(device, vm):
    """attached outside → attached to `vm`, once an admin adopted its domain as `vm`."""
    _expect_outside(device)
    device.vm = vm


def let_go(device):
    """attached outside → free, once its agent reports no domain holding it."""
    _expect_outside(device)
    device.status = _free_status(device)


def _expect_outside(device):
    _expect(device, (ATTACHED,))
    if device.vm is not None:
        raise IllegalTransition(device.id, device.status, (ATTACHED,),
                                f"claimed by {device.vm}")


def mark_unavailable(device):
    """Gone or replaced on its host: the holder is kept so the operator sees the conflict."""
    device.status = UNAVAILABLE


def forget_holder(device):
    """An unavailable device whose VM let go of it (deleted, moved back): it keeps its
    record for the operator, without a holder. A claimed device is released instead."""
    _expect(device, (UNAVAILABLE,))
    device.vm = None


def start_free(device):
    """A device first reported, held by nobody: ready only when it can be assigned."""
    device.status = _free_status(device)


def settle_assignability(device):
    """ready ⇄ not_assignable as the agent's `assignable` changes; attached and
    unavailable devices keep their status (a VM's device stays its own)."""
    if device.status in (READY, NOT_ASSIGNABLE):
        device.status = _free_status(device)


def come_back(device):
    """unavailable → attached (it kept its VM) or free again, once reported as before."""
    _expect(device, (UNAVAILABLE,))
    device.status = ATTACHED if device.vm else _free_status(device)


def can_delete(device):
    return device.status == UNAVAILABLE


def enable(device):
    device.state = ENABLED


def disable(device):
    """Blocks new claims; a device already attached stays with its VM."""
    device.state = DISABLED


def _free_status(device):
    return READY if getattr(device, "assignable", True) is not False else NOT_ASSIGNABLE


def _expect(device, expected):
    if device.status not in expected:
        raise IllegalTransition(device.id, device.status, expected)
