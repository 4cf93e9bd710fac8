"""Fault-injection pauses: the agent's one test seam, read once when the agent starts.

A test that must SIGKILL the agent at a named step sets, for the agent's process,
`HOSTPLANE_VIRT_TEST_PAUSE` (steps `claimed`, `attached-one`) or
`HOSTPLANE_NET_TEST_PAUSE` (steps `created-<kind>`) to `"<step>:<seconds>"`. The matching
pause writes `paused-<step>` (holding the pid) into the state directory and sleeps there;
the test waits for the file, checks what is half-done, and kills the process. Unset (in
production), each adapter is handed `never`, which does nothing.
"""

import os
import time
from types import SimpleNamespace

VIRT_VARIABLE = "HOSTPLANE_VIRT_TEST_PAUSE"
NET_VARIABLE = "HOSTPLANE_NET_TEST_PAUSE"


def never(step):
    """No pause: what every adapter gets unless a test asked for one."""


def from_environment(state_dir):
    """`.virt` and `.net`: the pause(step) callables the adapters are built with."""
    return SimpleNamespace(virt=_pause_for(VIRT_VARIABLE, state_dir),
                           net=_pause_for(NET_VARIABLE, state_dir))


def _pause_for(variable, directory):
    wanted, _, seconds = os.environ.get(variable, "").partition(":")
    if not wanted or not directory:
        return never

    def pause(step):
        if step == wanted:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, f"paused-{step}"), "w", encoding="utf-8") as mark:
                mark.write(str(os.getpid()))
            time.sleep(float(seconds or 60))
    return pause
