"""The desired set of networks, kept in `<state_dir>/networks.json` across agent restarts.

On start the agent rebuilds what this file says should exist, so a reboot (which wipes
bridges) or a hand-deleted interface heals itself. Writes are atomic (rename) and
serialised across gunicorn workers with a lock file.

An apply first records its intent in `networks.pending.json` (name, new spec, previous
spec) and clears it when done, either way. A pending entry found by the next lock holder
means the process died mid-apply; `HostNetworks` then finishes it (or rolls it back).
"""

import contextlib
import json
import logging
import os

from agent.atomic import write_json as _write_json
from hostplane.filelock import exclusive

log = logging.getLogger(__name__)


class DesiredSet:
    """{network name: desired-state dict}; `path` None keeps it in memory only."""

    def __init__(self, path):
        self.path = path
        self.pending_path = path[:-len(".json")] + ".pending.json" if path else None

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
        with exclusive(self.path + ".lock"):
            yield self._write

    def begin(self, name, spec, previous):
        """Call with the set locked, before touching any link."""
        if self.pending_path:
            _write_json(self.pending_path, {"name": name, "spec": spec, "previous": previous,
                                            "pid": os.getpid()})

    def interrupted(self):
        """The apply a dead process left unfinished, or None."""
        if not self.pending_path or not os.path.exists(self.pending_path):
            return None
        try:
            with open(self.pending_path, encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable %s (%s)", self.pending_path, exc)
            return None

    def done(self):
        if self.pending_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pending_path)

    def _write(self, data):
        _write_json(self.path, data)
