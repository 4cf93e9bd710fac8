"""The VM state machine as the controller keeps it: every VM state change goes through here.

A VM row exists from the claim of its create until its delete is confirmed. While an
operation is with an agent the row says so (`creating`, `deleting`, `moving`), and only
an answer from that agent, or the poller asking it later, ends the operation. Nothing is
freed on an agent's silence: a create whose answer never came stays `creating`, with
its devices, until the agent says whether the VM exists.

Like the device transitions, each function checks the state it may start from and
raises `IllegalVmTransition` naming what was expected; the controller answers it as
409 `vm_busy`. Functions take any object with `name`, `state` (and `op_id`,
`op_since`) attributes — SQLAlchemy rows included — and change it in place.
"""

CREATING, DELETING, MOVING = "creating", "deleting", "moving"
RUNNING, STOPPED = "running", "stopped"
BUSY = frozenset({CREATING, DELETING, MOVING})
# What an agent reports of a domain (libvirt's states); anything else is "unknown".
SETTLED = frozenset({RUNNING, STOPPED, "paused", "stopping", "crashed", "suspended",
                     "unknown"})


class IllegalVmTransition(Exception):
    def __init__(self, name, state, expected, why=None):
        self.name, self.state, self.expected = name, state, tuple(sorted(expected))
        message = f"VM {name} is {state}"
        if why:
            message += f"; {why}"
        super().__init__(message)


def observed(state):
    """The settled state for what an agent reported (None or odd values: unknown)."""
    return state if state in SETTLED else "unknown"


def begin_create(vm, op_id, now):
    """A new row, claimed and about to be asked of its agent."""
    vm.state, vm.op_id, vm.op_since = CREATING, op_id, now


# A create settles only a row in one of these states, of its own operation id; a writer
# may put that condition and `created_values` in one statement (controller.vm_records).
CREATED_FROM = frozenset({CREATING})


def created(vm, op_id, agent_state):
    """creating → what the agent reports, only for the create that made this row."""
    _expect(vm, CREATED_FROM, op_id)
    for name, value in created_values(agent_state).items():
        setattr(vm, name, value)


def created_values(agent_state):
    """What `created` sets."""
    return {"state": observed(agent_state), "op_since": None}


def report(vm, agent_state):
    """A start, stop or poll answer of a settled VM (a busy VM is not overwritten)."""
    _expect(vm, SETTLED)
    vm.state = observed(agent_state)


def begin_delete(vm, op_stale, now):
    """settled → deleting, stamped `now` (the delete's own mark: a takeover replaces it).
    A create or delete that has been with its agent longer than any answer may take
    (`op_stale`) may be taken over by a new delete: its caller has given up, and the
    delete settles it either way."""
    if vm.state in SETTLED or (vm.state in (CREATING, DELETING) and op_stale):
        vm.state, vm.op_since = DELETING, now
        return
    raise IllegalVmTransition(vm.name, vm.state, SETTLED | {CREATING, DELETING},
                              _BUSY_WHY.get(vm.state))


def undo_delete(vm, previous):
    """deleting → the state before it, when the agent surely never got the request."""
    _expect(vm, {DELETING})
    vm.state = previous


def begin_move(vm, target):
    """stopped → moving to `target` (its room there is held meanwhile)."""
    if vm.state != STOPPED or vm.moving_to is not None:
        raise IllegalVmTransition(vm.name, vm.state, {STOPPED}, _BUSY_WHY.get(vm.state))
    vm.moving_to, vm.state = target, MOVING


def arrive(vm, op_id):
    """moving → its target becomes its host (the domain there carries `op_id`); the move
    ends with `end_move`."""
    _expect(vm, {MOVING})
    vm.host_id, vm.op_id = vm.moving_to, op_id


def end_move(vm, agent_state):
    """moving → what the agent reports, wherever the VM ended."""
    _expect(vm, {MOVING})
    vm.moving_to, vm.state = None, observed(agent_state)


def domain_is_ours(domain_op, expected_ops):
    """Is a domain carrying `domain_op` (from its metadata) the VM whose rows expect one of
    `expected_ops`? None among them: a VM from before operation ids, any domain of its
    name is it; no rows at all (None): an orphan."""
    if expected_ops is None:
        return False
    return None in expected_ops or domain_op in expected_ops


def require_settled(vm, doing):
    """Refuse `doing` (start, stop, attach…) while an operation is with an agent."""
    if vm.state in BUSY:
        raise IllegalVmTransition(vm.name, vm.state, SETTLED,
                                  f"{doing} waits until that settles")


_BUSY_WHY = {
    CREATING: "its create has not been answered by its agent yet",
    DELETING: "it is being deleted",
    MOVING: "it is moving to another host",
}


def _expect(vm, expected, op_id=None):
    if vm.state not in expected:
        raise IllegalVmTransition(vm.name, vm.state, expected, _BUSY_WHY.get(vm.state))
    if op_id is not None and vm.op_id != op_id:
        raise IllegalVmTransition(vm.name, vm.state, expected,
                                  "it belongs to another operation now")
