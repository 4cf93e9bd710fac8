"""The per-host attach lock and the claim journal that survives a killed worker.

gunicorn runs several worker processes, each with its own libvirt connection, so the
claim-check-attach sequence is serialised with `flock` on a file under `[host]
state_dir`, not a thread lock. Before attaching, the holder writes what it is about to
do to the journal; a journal found by the next holder (or at start) means a worker died
mid-attach. Recovery does not undo anything — a client may already have retried — it
records what the domain XML shows was and was not done, so nothing stays unreported.
"""

import contextlib
import fcntl
import json
import logging
import os
import time

from agent.atomic import write_json as _write_json
log = logging.getLogger(__name__)
KEEP_REPORTS = 50


class HostLock:
    def __init__(self, state_dir):
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(state_dir, "virt.lock")

    @contextlib.contextmanager
    def held(self):
        """Exclusive across processes and threads: each holder opens its own descriptor."""
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


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
