"""HTTP client for one agent. Transport failures become 503; agent errors pass through.

The agent already answers with the shared error envelope, so a 409 from the agent
(device busy, group not viable) reaches the controller's caller with the agent's own
code and message, tagged with the host it came from. The status the agent really gave
stays on the error as `agent_status` (a 501 is still answered as 503 dependency down).
Whether the agent may have acted is on the error too (`maybe_done`): an agent that
refused the connection, or answered 4xx, surely did not; a timeout, a reset or a 5xx
leaves it unknown, and the caller must ask again rather than assume.
"""

import json as _json
import math
import ssl
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, SSLError

from hostplane.config import ConfigError
from hostplane.errors import ApiError, DependencyDown

NOT_MODIFIED = object()
# A VM operation's agent call (define, start, unplug) may wait this many poll timeouts,
# unless `[agents] operation_timeout_s` says how long.
OPERATION_TIMEOUTS = 6


class Agents:
    """Every way the controller reaches an agent, with one timeout policy: a read (a poll,
    the health asked at registration) or a network push waits `[poll] timeout_s`; a VM
    operation waits `[agents] operation_timeout_s`, or `OPERATION_TIMEOUTS` times the
    poll's (a VFIO start pins all guest memory first: minutes for a large VM on a big
    host, and a VM in a nested lab is slow to define). All share one keep-alive pool (a poll
    cycle reuses connections), verified against `[agents] ca`, or the system's trust
    store without one; the environment's proxies and CA variables are not consulted.

    urllib3 directly, not requests: an agent call is a create's third largest cost, and
    requests' session layer (environment merging, request preparation) nearly doubled it."""

    def __init__(self, poll_config, ca="", operation_timeout_s=0.0):
        self.timeout_s = float(poll_config["timeout_s"])
        if isinstance(operation_timeout_s, bool) or not isinstance(
                operation_timeout_s, (int, float)) or not 0 <= operation_timeout_s < math.inf:
            raise ConfigError("[agents] operation_timeout_s must be a number of seconds, "
                              f"0 for {OPERATION_TIMEOUTS} x [poll] timeout_s; "
                              f"not {operation_timeout_s!r}")
        self.operation_s = float(operation_timeout_s) or OPERATION_TIMEOUTS * self.timeout_s
        connections = int(poll_config["concurrency"])
        self.pool = urllib3.PoolManager(num_pools=connections * 4, maxsize=connections,
                                        cert_reqs="CERT_REQUIRED", ca_certs=ca or None,
                                        retries=False)

    def at(self, url, token):
        """A client for an agent not registered yet (reads only)."""
        return AgentClient(url, token, self.timeout_s, self.pool)

    def of(self, host, operation=False):
        """A client for a registered host; `operation`: a VM operation's longer wait."""
        return AgentClient(host.url, host.token,
                           self.operation_s if operation else self.timeout_s, self.pool)


class Answer:
    """An agent's answer: its status, headers and JSON body."""
    __slots__ = ("status_code", "headers", "data")

    def __init__(self, status_code, headers, data):
        self.status_code, self.headers, self.data = status_code, headers, data

    def json(self):
        return _json.loads(self.data)


class AgentClient:
    def __init__(self, url, token, timeout=5.0, pool=None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self.pool = pool or urllib3.PoolManager(cert_reqs="CERT_REQUIRED", retries=False)

    # --- inventory and identity --------------------------------------------------------
    def health(self):
        return self._call("GET", "/v1/health").json()

    def host(self):
        return self._call("GET", "/v1/host").json()

    def devices(self, etag=None):
        """(body, etag), or (NOT_MODIFIED, etag) when `etag` still matches."""
        headers = {"If-None-Match": etag} if etag else {}
        response = self._call("GET", "/v1/devices", headers=headers, ok=(200, 304))
        if response.status_code == 304:
            return NOT_MODIFIED, etag
        return response.json(), response.headers.get("ETag")

    # --- VMs ---------------------------------------------------------------------------
    def create_vm(self, spec):
        """Define (and maybe start) the VM `spec` names; build it with `vm_spec`."""
        return self._call("POST", "/v1/vms", json=spec).json()

    def vm(self, name):
        return self._call("GET", f"/v1/vms/{name}").json()

    def start_vm(self, name):
        return self._call("POST", f"/v1/vms/{name}/start").json()

    def stop_vm(self, name, force=False):
        return self._call("POST", f"/v1/vms/{name}/stop", json={"force": force}).json()

    def delete_vm(self, name, op_id=None):
        """True when the agent deleted it, False when it had no such VM. With `op_id`
        the agent also cancels that create for good, and leaves a VM made by another
        operation alone (409 vm_changed)."""
        params = {"op_id": op_id} if op_id else None
        return self._call("DELETE", f"/v1/vms/{name}", ok=(200, 202, 204, 404),
                          params=params).status_code != 404

    def claim_domain(self, name, op_id, expected):
        """Record operation `op_id` in domain `name` if it still carries `expected`."""
        return self._call("PUT", f"/v1/vms/{name}/operation",
                          json={"op_id": op_id, "expected": expected}).json()

    def list_vms(self):
        return self._call("GET", "/v1/vms").json()["vms"]

    def attach(self, name, kind, device_id):
        return self._call("POST", f"/v1/vms/{name}/devices",
                          json={"type": kind, "id": device_id}).json()

    def detach(self, name, device_id):
        self._call("DELETE", f"/v1/vms/{name}/devices/{device_id}", ok=(200, 202, 204, 404))

    # --- networks ----------------------------------------------------------------------
    def put_network(self, name, state):
        """Desired state of one L2 network (idempotent on the agent); its answer."""
        return self._call("PUT", f"/v1/networks/{name}", json=state).json()

    def delete_network(self, name):
        """True when the agent removed it, False when it had no such network."""
        return self._call("DELETE", f"/v1/networks/{name}", ok=(200, 202, 204, 404)
                          ).status_code != 404

    # --- plumbing ----------------------------------------------------------------------
    def _call(self, method, path, ok=(200, 201, 202, 204), headers=None, json=None,
              params=None):
        headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        body = None
        if json is not None:
            body = _json.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        url = self.url + path + (f"?{urlencode(params)}" if params else "")
        try:
            answer = self.pool.request(method, url, body=body, headers=headers,
                                       timeout=self.timeout, redirect=False, retries=False)
        except SSLError as exc:
            raise DependencyDown(f"agent at {self.url} failed TLS verification: "
                                 f"{tls_reason(exc)}", code="agent_tls_failed",
                                 details={"agent": self.url}) from None
        except (HTTPError, OSError) as exc:
            error = DependencyDown(f"agent at {self.url} unreachable: {type(exc).__name__}",
                                   code="agent_unreachable", details={"agent": self.url})
            # never connected (refused, no route, connect timeout): the agent cannot have
            # seen the request; any later failure leaves it unknown
            error.maybe_done = not isinstance(exc, ConnectTimeoutError)
            raise error from None
        response = Answer(answer.status, answer.headers, answer.data)
        if response.status_code in ok:
            return response
        raise _agent_error(self.url, response)


def vm_spec(name, vcpus, memory_mib, networks, devices, op_id, start, numa_node=None):
    """The agent's `POST /v1/vms` body for a VM the controller placed, created or moved:
    `devices` are the claimed (kind, id) pairs, `op_id` the operation that makes it,
    `numa_node` the host node the scheduler chose (the agent pins the VM there)."""
    spec = {"name": name, "vcpus": vcpus, "memory_mib": memory_mib, "networks": networks,
            "start": start, "op_id": op_id,
            "devices": [{"type": kind, "id": device_id} for kind, device_id in devices]}
    if numa_node is not None:
        spec["numa_node"] = numa_node
    return spec


def tls_reason(exc):
    """The TLS library's own words (e.g. "IP address mismatch, certificate is not valid
    for '10.0.0.5'") from under urllib3's wrappers."""
    seen, todo = set(), [exc]
    while todo:
        error = todo.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ssl.SSLError):
            return getattr(error, "verify_message", None) or error.reason or str(error)
        todo += [getattr(error, "reason", None), error.__cause__, error.__context__,
                 *(arg for arg in getattr(error, "args", ()) if isinstance(arg, BaseException))]
    return str(exc)


def _agent_error(url, response):
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = "agent_error", f"agent answered {response.status_code}", {}
    status = response.status_code
    if status == 401:
        error = DependencyDown("agent refused the controller's token", code="agent_auth_failed",
                               details={"agent": url})
    elif status >= 500:
        error = DependencyDown(f"agent at {url}: {message}", code=code,
                               details={**details, "agent": url})
    else:
        error = ApiError(message, code=code, status=status, details={**details, "agent": url})
    error.agent_status = status
    error.maybe_done = status >= 500
    return error


def maybe_done(error):
    """Could the agent have carried out the request that ended in `error`? (An error
    that did not come from an agent call: no.)"""
    return getattr(error, "maybe_done", False)
