"""An exclusive lock on a file, held across processes (gunicorn's workers) and threads.

Each holder opens its own descriptor, so a second thread of the same process waits too
(flock locks belong to the open file description, not to the process).
"""

import contextlib
import fcntl


@contextlib.contextmanager
def exclusive(path):
    """Hold `path` (created if missing) exclusively for the `with` block."""
    handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
