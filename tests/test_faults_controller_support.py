"""Real processes and real network paths for the controller fault tests (no tests here).

- `ControllerProcess`: `hostplane-controller serve` (gunicorn, its own session so a
  SIGKILL takes master and workers at once, as a crashed node would), on a TCP port or
  a unix socket, optionally inside a network namespace.
- `AgentProcess`: a gunicorn agent (synthetic host, libvirt `test:///default`) that can
  be frozen (SIGSTOP) and thawed, killed, and started again on the same address.
- `Relay`: a TCP forwarder process (`python -m tests.test_faults_controller_support
  relay LISTEN TARGET`), run inside a namespace; killing it makes the agent's address
  refuse connections while the agent and its domains live on.
- `UnixHttp`: HTTP over a unix socket, to reach a service inside a namespace from here.
- `Api`, `agent_domains`: what an operator reads of the controller and of an agent.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from tests.conftest import TOKEN as AGENT_TOKEN
from tests.hardening import synthetic_agent_env
from tests.support import free_port
from tests.support.processes import ServedProcess
from tests.synthetic import write_proc, write_sysfs_tree
from tests.test_controller_support import ADMIN, ADMIN_TOKEN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ControllerProcess(ServedProcess):
    """`hostplane-controller serve` with the poller on; `url` is http(s)://... or None
    when bound to a unix socket (`http` then talks to it)."""

    def __init__(self, tmp_path, database_url, bind=None, netns=None, workers=2, ca=None,
                 **settings):
        self.ca = ca   # to verify an https controller by
        self.socket_path = str(tmp_path / "controller.sock") if netns else None
        self.bind = bind or (f"unix:{self.socket_path}" if netns
                             else f"127.0.0.1:{free_port()}")
        env = {**os.environ, "HOSTPLANE_CONTROLLER_CONFIG": str(tmp_path / "absent.toml"),
               "HOSTPLANE_SERVER_ADMIN_TOKEN": ADMIN_TOKEN,
               "HOSTPLANE_SERVER_WORKERS": str(workers), "HOSTPLANE_DATABASE_URL": database_url,
               "HOSTPLANE_POLL_INTERVAL_S": "1", "HOSTPLANE_POLL_TIMEOUT_S": "1",
               "HOSTPLANE_POLL_MAX_FAILURES": "3", "HOSTPLANE_POLL_JITTER_S": "0"}
        (tmp_path / "metrics").mkdir(exist_ok=True)   # several workers: multiprocess metrics
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
        env.update({f"HOSTPLANE_{key.upper()}": str(value) for key, value in settings.items()})
        super().__init__([sys.executable, "-m", "controller.cli", "serve", "--bind", self.bind],
                         env, tmp_path / "controller.log", netns)
        scheme = "https" if settings.get("server_tls_cert") else "http"
        self.url = None if netns else f"{scheme}://{self.bind}"
        self.http = UnixHttp(self.socket_path) if netns else None
        self.start()

    def start(self, ready=None):
        self.spawn()
        self.wait_answering("the controller", ready or self._answers)

    def _answers(self):
        try:
            if self.http:
                return self.http.call("GET", "/v1/health")[0] == 200
            import requests
            return requests.get(self.url + "/v1/health", timeout=2, verify=self.ca or True).ok
        except OSError:
            return False

    def restart(self):
        self.kill()
        if self.socket_path and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self.start()


class AgentProcess(ServedProcess):
    """A gunicorn agent on a synthetic two-GPU host (small_gpu_host, or `host`) bound to
    `bind` (host:port or unix:)."""

    def __init__(self, tmp_path, host_id, bind, host=None, workers=1):
        env = synthetic_agent_env(tmp_path, host_id)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if host is not None:
            env["HOSTPLANE_HOST_SYSFS_ROOT"] = str(write_sysfs_tree(host, tmp_path / "own-sys"))
            env["HOSTPLANE_HOST_PROC_ROOT"] = write_proc(str(tmp_path / "own-proc"), host)
        self.bind = bind
        self.http = UnixHttp(bind[5:], AGENT_TOKEN) if bind.startswith("unix:") else None
        self.url = None if self.http else f"http://{bind}"
        super().__init__([sys.executable, "-m", "gunicorn", "--bind", bind, "--workers",
                          str(workers), "--timeout", "300", "agent.app:create_app()"],
                         env, tmp_path / f"{host_id}.log")
        self.start()

    def start(self):
        self.spawn()
        self.wait_answering("the agent", self._answers)

    def _answers(self):
        try:
            return self.get("/v1/health")[0] == 200
        except OSError:
            return False

    def get(self, path):
        """(status, body) straight from the agent, as an operator on the host would ask."""
        if self.http:
            return self.http.call("GET", path)
        import requests
        answer = requests.get(self.url + path, timeout=10,
                              headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
        return answer.status_code, answer.json()

    def freeze(self):
        self.signal_all(signal.SIGSTOP)

    def thaw(self):
        self.signal_all(signal.SIGCONT)


class Api:
    """The controller's API as an operator's script calls it: (status, body)."""

    def __init__(self, controller):
        self.controller = controller

    def __call__(self, method, path, body=None):
        if self.controller.http:
            return self.controller.http.call(method, path, body)
        import requests
        answer = requests.request(method, self.controller.url + path, headers=ADMIN,
                                  json=body, timeout=60)
        return answer.status_code, (answer.json() if answer.content else None)

    def host(self, host_id):
        return self("GET", f"/v1/hosts/{host_id}")[1]

    def claims(self):
        """What the controller says is reserved: VMs and who holds which device."""
        vms = {vm["name"]: (vm["host"], vm["state"], sorted(d["id"] for d in vm["devices"]))
               for vm in self("GET", "/v1/vms")[1]["vms"]}
        devices = {(d["host_id"], d["id"]): (d["status"], d["vm"])
                   for d in self("GET", "/v1/devices")[1]["devices"]}
        return vms, devices

    def quietly(self, *args):
        """A call whose controller is killed under it (in a thread): no answer expected."""
        import requests
        try:
            self(*args)
        except (requests.RequestException, OSError):
            pass


def agent_domains(agent):
    """{vm name: (state, sorted device ids)} as the agent itself reports them."""
    status, body = agent.get("/v1/vms")
    assert status == 200, body
    return {vm["name"]: (vm["state"], sorted(d["id"] for d in vm.get("devices", [])))
            for vm in body["vms"]}


def crash_and_restart(controller, request, lost=(), thawed=()):
    """SIGKILL `controller` under `request` (a thread calling it); agents in `lost` are
    killed and start again empty (a new boot); after the controller's restart, agents in
    `thawed` are thawed and handle what the dead controller left queued. Returns the
    monotonic time of the restart."""
    controller.kill()
    request.join(timeout=120)
    for agent in lost:
        agent.kill()
        agent.start()
    started = time.monotonic()
    controller.start()
    for agent in thawed:
        agent.thaw()
    return started


class UnixHttp:
    """Minimal HTTP/JSON client over a unix socket (bearer token of the admin by default)."""

    def __init__(self, path, token=ADMIN_TOKEN):
        self.path, self.token = path, token

    def call(self, method, path, body=None, timeout=30):
        connection = _UnixConnection(self.path, timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            payload = None
            if body is not None:
                payload = json.dumps(body)
                headers["Content-Type"] = "application/json"
            connection.request(method, path, body=payload, headers=headers)
            answer = connection.getresponse()
            text = answer.read()
            if answer.getheader("Content-Type", "").startswith("application/json"):
                return answer.status, json.loads(text)
            return answer.status, text.decode("utf-8", "replace")
        finally:
            connection.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Namespaces:
    """Two namespaces joined by a veth pair: `ctl` (10.77.<n>.1) and `agt` (10.77.<n>.2).
    Nothing is added to the machine's own namespace."""

    def __init__(self, prefix="hpf-"):
        tag = f"{os.getpid() % 10000}"
        self.ctl, self.agt = f"{prefix}c{tag}", f"{prefix}a{tag}"
        self.subnet = 10 + os.getpid() % 200
        self.ctl_ip, self.agt_ip = f"10.77.{self.subnet}.1", f"10.77.{self.subnet}.2"
        for name in (self.ctl, self.agt):
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", self.ctl, "link", "add", "hpfc0", "type", "veth", "peer", "name", "hpfa0",
            "netns", self.agt)
        for name, link, address in ((self.ctl, "hpfc0", self.ctl_ip),
                                    (self.agt, "hpfa0", self.agt_ip)):
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", name, "link", "set", link, "up")

    def blackhole_agent(self):
        """The agent's side black-holes the way back: the controller's SYNs arrive and
        nothing ever answers, so connects time out instead of being refused (a blackhole
        on the controller's own side would fail connect() at once, locally)."""
        _ip("-n", self.agt, "route", "add", "blackhole", f"{self.ctl_ip}/32")

    def heal(self):
        _ip("-n", self.agt, "route", "del", "blackhole", f"{self.ctl_ip}/32")

    def delete(self):
        for name in (self.ctl, self.agt):
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Relay:
    """A TCP forwarder process listening on `listen` (host:port) towards `target`
    (host:port or unix:path), optionally inside a namespace."""

    def __init__(self, listen, target, netns=None, log_path=os.devnull):
        self.listen, self.target, self.netns, self.log_path = listen, target, netns, log_path
        self.process = None
        self.start()

    def start(self):
        command = (["ip", "netns", "exec", self.netns] if self.netns else []) + [
            sys.executable, "-m", "tests.test_faults_controller_support", "relay",
            self.listen, self.target]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                            stderr=log)
        assert self.process.stdout.readline().strip() == b"listening", "relay did not start"

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _relay_main(listen, target):
    host, port = listen.rsplit(":", 1)
    server = socket.create_server((host, int(port)), reuse_port=False)
    print("listening", flush=True)
    while True:
        client, _ = server.accept()
        if target.startswith("unix:"):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = target[5:]
        else:
            upstream = socket.socket()
            address = (target.rsplit(":", 1)[0], int(target.rsplit(":", 1)[1]))
        try:
            upstream.connect(address)
        except OSError:
            client.close()
            continue
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


if __name__ == "__main__" and sys.argv[1:2] == ["relay"]:
    _relay_main(sys.argv[2], sys.argv[3])
