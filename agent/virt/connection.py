"""The agent's one libvirt connection, its event loop, and what to do when it drops.

Libvirt's default event loop is registered once per process, before any connection is
opened, and runs in a daemon thread; lifecycle and device-removed events arrive there.

A dropped connection is *reconnected*, not fatal: the close callback marks it gone,
the watcher thread reopens it every `RETRY_S` seconds and registers the callbacks
again, then asks for a rescan. Exiting instead would let systemd restart the agent,
but gunicorn workers would die and be respawned in a loop while libvirtd is down, and
nobody could ask `/v1/health`, which must answer "degraded" meanwhile. Calls made while
disconnected raise `DependencyDown` (503).

Events are not enough on their own: a config-only edit of a stopped domain (`virsh
attach-device --config`) raises none, so the watcher also rescans every `RESCAN_S`,
and at once when another worker of this agent says it changed something.
"""

import contextlib
import logging
import os
import threading
import time

from hostplane.errors import Conflict, DependencyDown, NotFound

try:
    import libvirt
except ImportError:  # pragma: no cover - the agent still serves its inventory
    libvirt = None

log = logging.getLogger(__name__)
RETRY_S = 1.0
RESCAN_S = 5.0
TICK_S = 0.2
_loop_lock = threading.Lock()
_loop = {"registered": False, "pid": None}


def libvirt_probe(uri):
    """{"ok", "uri", "version", "error"} from a read-only connection attempt."""
    if libvirt is None:
        return {"ok": False, "uri": uri, "version": None, "error": "libvirt-python not installed"}
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        return {"ok": False, "uri": uri, "version": None, "error": str(exc)}
    try:
        return {"ok": True, "uri": uri, "error": None, "version": dotted(conn.getLibVersion())}
    finally:
        conn.close()


def dotted(number):
    """libvirt's 9000000 → "9.0.0"."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def ensure_event_loop():
    """Register libvirt's default event loop once, and run it in a thread of this process
    (again after a fork: the registration is inherited, the thread is not)."""
    with _loop_lock:
        if libvirt is None or _loop["pid"] == os.getpid():
            return
        if not _loop["registered"]:
            libvirt.registerErrorHandler(lambda _opaque, _error: None, None)  # we report them
            libvirt.virEventRegisterDefaultImpl()
            _loop["registered"] = True
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _loop["pid"] = os.getpid()


def _run_event_loop():
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # noqa: BLE001 - the loop must outlive one bad callback
            log.exception("libvirt event loop iteration failed")


class Connection:
    """Open, watch and reopen the connection; `on_change()` runs after events and reconnects.

    `on_removed(domain_name, alias)` is called from the event thread for device-removed
    events; `on_change()` from the watcher thread, never the event thread, so it may call
    libvirt freely. `should_rescan()` is polled every `TICK_S` (another worker changed
    something libvirt raises no event for).
    """

    def __init__(self, uri, on_change, on_removed, should_rescan=lambda: False):
        self.uri = uri
        self._on_change = on_change
        self._on_removed = on_removed
        self._should_rescan = should_rescan
        self._conn = None
        self._error = "not connected yet"
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dirty = threading.Event()
        self._closing = False
        self._watcher = None

    # --- public -----------------------------------------------------------------------
    def start(self):
        ensure_event_loop()
        self._connect(first=True)     # the caller scans right after; no rescan queued
        self._watcher = threading.Thread(target=self._watch, name="libvirt-watch", daemon=True)
        self._watcher.start()

    def get(self):
        """The open connection, or DependencyDown (503) naming the URI and the reason."""
        conn = self._conn
        if conn is None:
            conn = self._connect()
        if conn is None:
            raise DependencyDown(f"libvirt at {self.uri} is unreachable: {self._error}",
                                 code="dependency_unavailable",
                                 details={"uri": self.uri, "error": self._error})
        return conn

    @property
    def connected(self):
        return self._conn is not None

    def status(self):
        """{"ok", "uri", "version", "qemu_version", "error"}; never raises."""
        conn = self._conn
        if conn is not None:
            try:
                return {"ok": True, "uri": self.uri, "version": dotted(conn.getLibVersion()),
                        "qemu_version": dotted(conn.getVersion()), "error": None}
            except libvirt.libvirtError as exc:
                self._lost(str(exc))
        return {"ok": False, "uri": self.uri, "version": None, "qemu_version": None,
                "error": self._error}

    def changed(self):
        """Ask the watcher for a rescan (after our own attach/detach, or an event)."""
        self._dirty.set()
        self._wake.set()

    @contextlib.contextmanager
    def errors(self, subject=None):
        """libvirt errors → envelopes: gone connection 503, no such domain 404, else 409."""
        try:
            yield
        except libvirt.libvirtError as exc:
            raise self.translate(exc, subject) from None

    def translate(self, exc, subject=None):
        code = exc.get_error_code()
        message = exc.get_error_message() or str(exc)
        if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC) \
                or exc.get_error_domain() == libvirt.VIR_FROM_RPC:
            self._lost(message)
            return DependencyDown(f"libvirt at {self.uri} is unreachable: {message}",
                                  code="dependency_unavailable", details={"uri": self.uri})
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            return NotFound(f"no VM {subject}" if subject else message, code="vm_not_found")
        if code == libvirt.VIR_ERR_NO_SUPPORT:
            return Conflict(f"libvirt at {self.uri} cannot do this: {message}",
                            code="not_supported_by_libvirt")
        return Conflict(f"libvirt refused: {message}", code="libvirt_refused",
                        details={"libvirt_code": code})

    def close(self):
        self._closing = True
        self._wake.set()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- internals ----------------------------------------------------------------------
    def _connect(self, first=False):
        if libvirt is None:
            self._error = "libvirt-python not installed"
            return None
        with self._lock:
            if self._conn is not None or self._closing:
                return self._conn
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                self._error = exc.get_error_message() or str(exc)
                return None
            with contextlib.suppress(libvirt.libvirtError):
                conn.setKeepAlive(5, 3)   # remote drivers only; notices a dead daemon
            conn.registerCloseCallback(self._closed, None)
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                        self._lifecycle, None)
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                                        self._removed, None)
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                                        self._lifecycle, None)
            self._conn, self._error = conn, None
            log.info("connected to libvirt at %s", self.uri)
        if not first:
            self.changed()
        return conn

    def _lost(self, reason):
        with self._lock:
            if self._conn is None:
                return
            self._conn, self._error = None, reason
        log.warning("lost libvirt at %s (%s); reconnecting every %.0f s", self.uri, reason,
                    RETRY_S)
        self._wake.set()

    def _closed(self, _conn, reason, _opaque):
        self._lost(f"connection closed (reason {reason})")

    def _lifecycle(self, _conn, _dom, *_args):
        self.changed()

    def _removed(self, _conn, dom, alias, _opaque):
        self._on_removed(dom.name(), alias)
        self.changed()

    def _watch(self):
        """Reconnect while down; run `on_change` after events, at most one at a time."""
        last_scan = last_try = time.monotonic()
        while not self._closing:
            self._wake.wait(TICK_S)
            self._wake.clear()
            if self._closing:
                return
            now = time.monotonic()
            if self._conn is None:
                if now - last_try >= RETRY_S:
                    last_try = now
                    self._connect()
                continue
            if now - last_scan >= RESCAN_S or self._should_rescan():
                self._dirty.set()
            if self._dirty.is_set():
                self._dirty.clear()
                last_scan = now
                try:
                    self._on_change()
                except DependencyDown:
                    self._dirty.set()
                except Exception:  # noqa: BLE001 - keep watching; the next event retries
                    log.exception("refreshing attachments from libvirt failed")
