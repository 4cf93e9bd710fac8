"""Best-effort "devices changed" events to the controller, off the monitor's thread.

The controller answers by fetching `/v1/devices`; the event only says when. Events are
coalesced (the newest generation wins) and dropped on failure: polling is the safety net.
They carry the agent's token, so an https controller is verified against `ca` (the
cluster CA) only: REQUESTS_CA_BUNDLE in the environment does not widen that trust.
"""

import logging
import queue
import threading

import requests

log = logging.getLogger(__name__)


class ControllerNotifier:
    def __init__(self, controller_url, host_id, boot_id, token, timeout=2.0, ca=""):
        self.url = f"{controller_url.rstrip('/')}/v1/hosts/{host_id}/events"
        self.ca = ca
        self.host_id, self.boot_id, self.token, self.timeout = host_id, boot_id, token, timeout
        self._queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def __call__(self, generation, reason):
        event = {"host_id": self.host_id, "boot_id": self.boot_id,
                 "generation": generation, "reason": reason}
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                pass

    def _run(self):
        session = requests.Session()
        if self.ca:
            session.verify, session.trust_env = self.ca, False
        while True:
            event = self._queue.get()
            try:
                session.post(self.url, json=event, timeout=self.timeout,
                             headers={"Authorization": f"Bearer {self.token}"})
            except requests.exceptions.SSLError as exc:   # configuration, not weather
                log.warning("event to controller not delivered, TLS refused: %s", exc)
            except requests.RequestException as exc:
                log.debug("event to controller not delivered: %s", exc)
