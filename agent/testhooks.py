"""Test-only pauses, so a fault-injection test can SIGKILL the agent at a named step.

`<VARIABLE>="<step>:<seconds>"` makes `pause` write `paused-<step>` (holding the pid)
into `directory` and sleep there; unset, it does nothing. Tests wait for the file,
check what is half-done, and kill the process.
"""

import os
import time


def pause(directory, variable, step):
    wanted, _, seconds = os.environ.get(variable, "").partition(":")
    if wanted == step and directory:
        with open(os.path.join(directory, f"paused-{step}"), "w", encoding="utf-8") as mark:
            mark.write(str(os.getpid()))
        time.sleep(float(seconds or 60))
