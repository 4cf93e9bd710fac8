"""A generation number shared by every worker process of one agent.

gunicorn runs several workers, each with its own copy of the inventory. Clients poll
whichever worker answers, so the number must agree across them: it lives in a small
file under the state directory, bumped under `flock` only when the content digest it
records differs from the one a worker now sees. Without a writable state directory it
falls back to a counter in this process.
"""

import fcntl
import json
import os


class SharedGeneration:
    def __init__(self, path=None):
        self.path = path
        self._digest = None
        self._generation = 0
        if path:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "a", encoding="utf-8"):
                    pass
            except OSError as exc:
                import logging  # rare: kept out of `hostplane-agent inventory`'s start-up
                logging.getLogger(__name__).warning(
                    "generation file %s unusable (%s); counting in-process", path, exc)
                self.path = None

    def observe(self, digest):
        """The generation for content `digest`, bumped if the content is new."""
        if digest == self._digest:
            return self._generation
        if self.path is None:
            self._generation += 1
        else:
            self._generation = self._observe_shared(digest)
        self._digest = digest
        return self._generation

    def _observe_shared(self, digest):
        with open(self.path, "r+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                stored = json.loads(handle.read() or "{}")
            except ValueError:
                stored = {}
            generation = int(stored.get("generation", 0))
            if stored.get("digest") != digest:
                generation = max(generation, self._generation) + 1
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps({"digest": digest, "generation": generation}))
                handle.flush()
            return generation
