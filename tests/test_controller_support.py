"""Real agents and a real controller on loopback, shared by the controller tests.

Not a test module (it holds no tests); it is named `test_controller_*` because that is the
controller slice's share of tests/. Agents read synthetic sysfs trees (this machine has no
GPUs, IOMMU or USB) and talk to libvirt's in-memory `test:///default` driver.
"""

import contextlib
import copy
import os
import subprocess
import threading
import uuid

import pytest

from werkzeug.serving import make_server

from agent.app import create_app as create_agent_app
from controller.app import create_app as create_controller_app
from controller.config import DEFAULTS as CONTROLLER_DEFAULTS
from controller.db import upgrade
from tests.conftest import TOKEN as AGENT_TOKEN, agent_config
from tests.support import free_port
from tests.support.processes import ServedProcess
from tests.synthetic import small_gpu_host, write_proc, write_sysfs_tree

ADMIN_TOKEN = "admin-token-0123456789"
TENANT_TOKEN = "acme-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TENANT = {"Authorization": f"Bearer {TENANT_TOKEN}"}
NVIDIA_T4, NVIDIA_A10 = ("10de", "1eb8"), ("10de", "2236")


class Served:
    """A WSGI app on 127.0.0.1 in a thread; `stop()` frees the port for a restart."""

    def __init__(self, app, port=0):
        self.app = app
        self.server = make_server("127.0.0.1", port, app, threaded=True)
        self.server.daemon_threads = True
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def gpu_host(model=NVIDIA_T4, usb_serial="4C530001"):
    """small_gpu_host with its GPU model and its USB stick's serial swapped."""
    host = small_gpu_host()
    for function in host.pci:
        if (function.vendor, function.device) == NVIDIA_T4:
            function.vendor, function.device = model
    for device in host.usb:
        if device.serial == "4C530001":
            device.serial = usb_serial
    return host


class LoopbackAgent:
    """A real agent app serving one synthetic host; `restart()` gives it a new boot_id."""

    def __init__(self, tmp_path, host_id, host, controller_url=""):
        self.base = tmp_path / host_id
        self.host_id, self.description, self.controller_url = host_id, host, controller_url
        self.tree = write_sysfs_tree(host, self.base / "sys")
        self.proc = write_proc(str(self.base / "proc"), host)
        self.served = None
        self.start()

    def config(self):
        return agent_config(self.base, host={
            "id": self.host_id, "sysfs_root": str(self.tree), "proc_root": self.proc,
            "controller_url": self.controller_url}, libvirt={"uri": self.libvirt_uri()})

    def libvirt_uri(self):
        """A private in-memory test driver: the agents share one process, and the agent
        counts every domain it can see as a holder, so `test:///default` would make one
        fake host's VMs hold the same addresses on all of them."""
        node = self.base / "libvirt-node.xml"
        if not node.exists():
            node.write_text("<node/>")
        return f"test://{node}"

    def start(self, port=0):
        self.app = create_agent_app(self.config())
        self.agent = self.app.extensions["hostplane_agent"]
        self.served = Served(self.app, port)
        self.url = self.served.url

    def stop(self):
        self.served.stop()
        self.agent.close()

    def restart(self, host=None):
        """Stop, optionally rewrite the sysfs tree as `host`, start on the same port."""
        port = self.served.port
        self.stop()
        if host is not None:
            import shutil
            shutil.rmtree(self.tree)
            self.tree = write_sysfs_tree(host, self.base / "sys")
        self.start(port)


def controller_config(tmp_path, database_url=None, **sections):
    config = copy.deepcopy(CONTROLLER_DEFAULTS)
    config["server"]["admin_token"] = ADMIN_TOKEN
    config["tenants"] = {"acme": TENANT_TOKEN}
    config["database"]["url"] = database_url or f"sqlite:///{tmp_path}/controller.db"
    config["poll"].update({"enabled": False, "jitter_s": 0.0, "timeout_s": 2,
                           "max_failures": 3})
    for section, values in sections.items():
        config[section].update(values)
    return config


def controller_app(config):
    upgrade(config["database"]["url"])
    return create_controller_app(config, start=config["poll"]["enabled"])


def register(client, agent, cluster="default"):
    answer = client.post("/v1/hosts", headers=ADMIN, json={
        "url": agent.url, "token": AGENT_TOKEN, "cluster": cluster})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def poller(app):
    return app.extensions["hostplane_controller"].poller


class _ActsAfterFetch:
    """An agent client whose inventory answer was read before `act` ran."""

    def __init__(self, client, act):
        self.client, self.act = client, act

    def __getattr__(self, name):
        return getattr(self.client, name)

    def devices(self, etag=None):
        answer = self.client.devices(etag)
        self.act()
        return answer


@contextlib.contextmanager
def stale_polls(app, act):
    """While inside, every poll of `app`'s poller reads its agent, runs `act` (the
    operator's request, say), then writes what it read: an answer slower than the
    controller's own writes, as a loaded agent or network gives."""
    watcher = poller(app)
    real = watcher._client
    watcher._client = lambda host: _ActsAfterFetch(real(host), act)
    try:
        yield watcher
    finally:
        watcher._client = real


class GunicornController(ServedProcess):
    """The controller as operators run it: gunicorn, 2 worker processes, one database."""

    def __init__(self, database_url, workers=2, threads=16):
        import sys
        import tempfile

        import requests
        upgrade(database_url)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HOSTPLANE_CONTROLLER_CONFIG": "/nonexistent",
               "HOSTPLANE_SERVER_ADMIN_TOKEN": ADMIN_TOKEN,
               "HOSTPLANE_TENANTS_ACME": TENANT_TOKEN,
               "HOSTPLANE_DATABASE_URL": database_url, "HOSTPLANE_POLL_ENABLED": "false"}
        log = tempfile.NamedTemporaryFile(prefix="gunicorn-controller-", suffix=".log",
                                          delete=False)
        log.close()
        # --keep-alive: gunicorn closes a new connection that sent nothing for 5 s plus
        # the keep-alive time (2 s by default), and a test's client of 1,000 threads on a
        # loaded 2-core machine was once that slow between its connect and its request.
        super().__init__([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                          "--workers", str(workers), "--threads", str(threads), "--backlog",
                          "2048", "--timeout", "120", "--keep-alive", "30",
                          "controller.app:create_app()"], env, log.name)
        self.spawn()

        def answers():
            try:
                return requests.get(self.url + "/v1/health", timeout=1).ok
            except requests.RequestException:
                return False
        try:
            self.wait_answering("the controller under gunicorn", answers, timeout=30)
        except AssertionError:
            self.stop()
            raise

    def stop(self):
        super().stop()
        if os.path.exists(self.log_path):
            os.unlink(self.log_path)


@contextlib.contextmanager
def two_host_world(tmp_path):
    """host-a: two 10de:1eb8 GPUs, USB stick 4C530001; host-b: two 10de:2236, stick
    4C530002; both registered with a controller on SQLite. Yields (app, client, agents)."""
    with loopback_world(tmp_path, {"host-a": gpu_host(),
                                   "host-b": gpu_host(NVIDIA_A10, "4C530002")}) as world:
        yield world


@contextlib.contextmanager
def loopback_world(tmp_path, trees):
    """A real agent per {host id: synthetic host}, each registered with a controller on
    SQLite. Yields (app, client, {host id: LoopbackAgent})."""
    agents = {host_id: LoopbackAgent(tmp_path, host_id, tree) for host_id, tree in trees.items()}
    app = controller_app(controller_config(tmp_path))
    client = app.test_client()
    try:
        for agent in agents.values():
            register(client, agent)
        yield app, client, agents
    finally:
        for agent in agents.values():
            agent.stop()
        app.extensions["hostplane_controller"].close()


def postgres_database():
    """A throw-away role and database on the local PostgreSQL, or a skip saying why not."""
    if subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.find(
            "online") < 0:
        pytest.skip("no PostgreSQL cluster online (scripts/start-daemons starts one)")
    name = f"hostplane_race_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    script = ('CREATE ROLE :"name" LOGIN PASSWORD :\'password\';\n'
              'CREATE DATABASE :"name" OWNER :"name";\n')
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-q", "-v", "ON_ERROR_STOP=1",
                    "-v", f"name={name}", "-v", f"password={password}"],
                   input=script, text=True, check=True, capture_output=True)
    return name, f"postgresql+psycopg://{name}:{password}@127.0.0.1:5432/{name}"


def drop_postgres_database(name):
    script = 'DROP DATABASE IF EXISTS :"name" WITH (FORCE);\nDROP ROLE IF EXISTS :"name";\n'
    subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-q", "-v", f"name={name}"],
                   input=script, text=True, capture_output=True)


def insert_host_row(connection, now, host_id="h"):
    """A host row written in SQL, for migration tests that run before the current schema."""
    import sqlalchemy as sa
    connection.execute(sa.text(
        "INSERT INTO hosts (id, url, token, cluster, status, state, iommu_enabled, "
        "iommu_ready, cpu_threads, memory_mib, failures, created_at, revision) VALUES "
        "(:id, 'http://h', 't', 'c', 'connected', 'enabled', true, true, 1, 1, 0, :now, 1)"),
        {"id": host_id, "now": now})


def insert_device_row(connection, now, device_id, **columns):
    """A PCI device row of host "h" written in SQL, for migration tests: the columns every
    revision has (a 10de:1eb8 GPU, enabled and ready), then `columns`, which may name
    columns of the revision the test starts from."""
    import sqlalchemy as sa
    values = {"host_id": "h", "id": device_id, "kind": "pci", "type": "gpu",
              "vendor_id": "10de", "product_id": "1eb8", "name": "x", "state": "enabled",
              "status": "ready", "shared": False, "assignable": True, "facts": "{}",
              "created_at": now, "updated_at": now, **columns}
    devices = sa.table("devices", *(sa.column(name) for name in values))
    connection.execute(sa.insert(devices).values(**values))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/race.db"
        return
    name, url = postgres_database()
    yield url
    drop_postgres_database(name)
