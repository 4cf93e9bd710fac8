"""The desired set of networks, kept in `<state_dir>/networks.json` across agent restarts.

On start the agent rebuilds what this file says should exist, so a reboot (which wipes
bridges) or a hand-deleted interface heals itself. Writes are atomic (rename) and
serialised across gunicorn workers with a lock file.
"""

import contextlib
import fcntl
import json
import logging
import os

log = logging.getLogger(__name__)


class DesiredSet:
    """{network name: desired-state dict}; `path` None keeps it in memory only."""

    def __init__(self, path):
        self.path = path

    def read(self):
        if not self.path or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); starting from an empty desired set", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def locked(self):
        """Hold the set for a read-change-write cycle; yields a write(dict) function."""
        if not self.path:
            yield lambda data: None
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path + ".lock", "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._write
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, data):
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
