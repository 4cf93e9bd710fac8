"""The per-host attach lock and the claim journal that survives a killed worker.

gunicorn runs several worker processes, each with its own libvirt connection, so the
claim-check-attach sequence is serialised with `flock` on a file under `[host]
state_dir`, not a thread lock. Before attaching, the holder writes what it is about to
do to the journal; a journal found by the next holder (or at start) means a worker died
mid-attach. Recovery does not undo anything — a client may already have retried — it
records what the domain XML shows was and was not done, so nothing stays unreported.
"""

import contextlib
import json
import logging
import os
import time

from agent.atomic import write_json as _write_json
from hostplane.filelock import exclusive

log = logging.getLogger(__name__)
KEEP_REPORTS = 50
KEEP_CANCELLED = 4096


class HostLock:
    def __init__(self, state_dir):
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, "virt.lock")

    def held(self):
        """Exclusive across processes and threads (`with lock.held(): ...`)."""
        return exclusive(self.path)


class Journal:
    """One pending operation (only the lock holder writes) and the reports of dead ones."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, "virt-journal.json")
        self.reports_path = os.path.join(state_dir, "virt-interrupted.json")

    def begin(self, vm, devices):
        _write_json(self.path, {"vm": vm, "devices": devices, "pid": os.getpid(),
                                "started": time.time()})

    def pending(self):
        return _read_json(self.path)

    def done(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def report(self, entry):
        reports = (self.reports() + [entry])[-KEEP_REPORTS:]
        _write_json(self.reports_path, reports)
        log.warning("interrupted attach found: %s", entry)

    def reports(self):
        return _read_json(self.reports_path) or []


class CancelledOperations:
    """Create operations the controller gave up on (only the lock holder writes).

    The controller cancels a create it got no answer for before it frees the claim; a
    request of that create still queued here is then refused instead of defining a VM
    that holds devices nobody has any more. The newest KEEP_CANCELLED are kept: far
    more than the requests one agent can have in flight.
    """

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, "virt-cancelled.json")

    def add(self, op_id):
        cancelled = [op for op in self._read() if op != op_id] + [op_id]
        _write_json(self.path, cancelled[-KEEP_CANCELLED:])

    def __contains__(self, op_id):
        return op_id in self._read()

    def _read(self):
        found = _read_json(self.path)
        return [op for op in found if isinstance(op, str)] if isinstance(found, list) else []


class ChangeMark:
    """A file the workers replace after each change, since libvirt raises no event for
    config-only edits of a stopped VM; the others notice by a cheap stat()."""

    def __init__(self, state_dir):
        self.path = os.path.join(state_dir, "virt.changed")
        self._seen = self._stamp()

    def touch(self):
        _write_json(self.path, {"pid": os.getpid(), "time": time.time()})

    def moved(self):
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return True

    def _stamp(self):
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_mtime_ns


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("%s is not valid JSON; ignoring it", path)
        return None
