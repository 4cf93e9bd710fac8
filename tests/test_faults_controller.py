"""Faults on the controller's side, each checked for nothing lost and nothing duplicated.

- The controller SIGKILLed between its claim and the agent's answer (a real agent frozen
  with SIGSTOP holds the create): on restart the claim is completed or released, never
  left half-made; on SQLite and PostgreSQL.
- An agent unreachable — refused (its relay killed) or black-holed (a blackhole route for
  the way back in the agent's namespace: requests time out) — goes `disconnected` after
  `max_failures`, and
  nothing is done to its VMs: records, claims and the agent's domains are unchanged.
- The database locked (SQLite, BEGIN EXCLUSIVE in another process) or gone (PostgreSQL
  behind a TCP relay that is killed) answers 503 `database_unavailable`, never 500.

Real parts throughout: gunicorn controllers and agents (libvirt `test:///default`),
namespaces and veths, the shared PostgreSQL server (a throw-away database on it).
"""

import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.db import upgrade
from tests.conftest import TOKEN as AGENT_TOKEN
from tests.test_controller_support import (ADMIN, LoopbackAgent, controller_app,
                                           controller_config, drop_postgres_database,
                                           gpu_host, postgres_database,
                                           register)
from tests.test_controller_support import database_url  # noqa: F401 - fixture
from tests.support import free_port, wait_until
from tests.test_faults_controller_support import (AgentProcess, Api, ControllerProcess, Namespaces,
                                                  Relay, agent_domains, crash_and_restart)

GPU = {"vendor_id": "10de", "device_id": "1eb8"}
GPUS = ("0000:3b:00.0", "0000:af:00.0")


# --- controller SIGKILL mid-create ---------------------------------------------------------
@pytest.mark.parametrize("agent_fate", ["request-delivered", "request-lost"])
def test_controller_killed_mid_create_completes_or_releases_the_claim_on_restart(
        tmp_path, database_url, agent_fate):
    """`request-delivered`: the frozen agent is thawed after the controller restarts and
    handles the dead controller's queued create. `request-lost`: the agent is killed and
    a fresh one (new boot id, no domains) takes its address."""
    upgrade(database_url)
    agent = AgentProcess(tmp_path, "hpf-kill-host", f"127.0.0.1:{free_port()}")
    controller = ControllerProcess(tmp_path, database_url)
    api = Api(controller)
    try:
        assert api("POST", "/v1/hosts", {"url": agent.url, "token": AGENT_TOKEN})[0] == 201
        agent.freeze()
        create = threading.Thread(target=api.quietly, args=("POST", "/v1/vms", {
            "name": "hpf-vm", "vcpus": 1, "memory_mib": 64, "start": False, "gpus": [GPU]}))
        create.start()
        wait_until("the claim", lambda: api("GET", "/v1/vms/hpf-vm")[1].get("state")
                   == "creating")
        claimed = api.claims()
        assert sum(status == "attached" for status, _ in claimed[1].values()) >= 1
        lost = agent_fate == "request-lost"    # killed between claim and agent answer
        started = crash_and_restart(controller, create, lost=[agent] if lost else [],
                                    thawed=[] if lost else [agent])
        settled = wait_until("the abandoned create to be settled", lambda: _settled(api),
                             timeout=180)
        print(f"\nfault: controller SIGKILL mid-create, {database_url.split(':')[0]}, "
              f"{agent_fate}: {settled} {time.monotonic() - started:.1f} s after restart")
        vms, devices = api.claims()
        domains = agent_domains(agent)
        assert all(state != "creating" for _, state, _ in vms.values())
        if settled == "completed":
            host, _state, held = vms["hpf-vm"]
            assert host == "hpf-kill-host" and held
            assert domains["hpf-vm"][1] == held          # the agent holds exactly the claim
            assert all(devices[(host, d)] == ("attached", "hpf-vm") for d in held)
        else:
            assert "hpf-vm" not in vms and "hpf-vm" not in domains
        held_by = {key: vm for key, (status, vm) in devices.items() if status == "attached"}
        assert set(held_by.values()) <= set(vms), f"orphan reservation: {held_by}"
        # capacity: exactly the GPUs not held by a finished VM can be claimed again
        free = sum(1 for (_, d), (s, _) in devices.items() if d in GPUS and s == "ready")
        made = [api("POST", "/v1/vms", {"name": f"hpf-fill-{i}", "vcpus": 1, "memory_mib": 64,
                                        "start": False, "gpus": [GPU]})[0] for i in range(3)]
        assert made.count(201) == free == 2 - (settled == "completed"), made
        gpus_on_agent = [d for _, held in agent_domains(agent).values() for d in held
                         if d in GPUS]
        assert sorted(gpus_on_agent) == list(GPUS)   # each GPU in exactly one domain
    finally:
        controller.stop()
        agent.stop()


def _settled(api):
    status, body = api("GET", "/v1/vms/hpf-vm")
    if status == 404:
        return "released"
    return "completed" if status == 200 and body["state"] != "creating" else None


# --- agent unreachable ---------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["refused", "blackholed"])
def test_unreachable_agent_is_disconnected_after_max_failures_and_its_vms_are_left_alone(
        tmp_path, fault):
    nets = Namespaces()
    agent = relay = controller = None
    try:
        agent = AgentProcess(tmp_path, "hpf-net-host", f"unix:{tmp_path}/agent.sock")
        relay = Relay(f"{nets.agt_ip}:7070", f"unix:{tmp_path}/agent.sock", netns=nets.agt)
        database = f"sqlite:///{tmp_path}/controller.db"
        upgrade(database)
        controller = ControllerProcess(tmp_path, database, netns=nets.ctl)
        api = Api(controller)
        status, body = api("POST", "/v1/hosts", {"url": f"http://{nets.agt_ip}:7070",
                                                 "token": AGENT_TOKEN})
        assert status == 201, body
        status, body = api("POST", "/v1/vms", {"name": "hpf-running", "vcpus": 1,
                                               "memory_mib": 64, "start": True,
                                               "gpus": [GPU]})
        assert status == 201 and body["state"] == "running", body
        before, domains_before = api.claims(), agent_domains(agent)
        assert domains_before["hpf-running"][0] == "running"

        started = time.monotonic()
        relay.kill() if fault == "refused" else nets.blackhole_agent()
        host = wait_until("the host to be disconnected", lambda: (
            lambda h: h if h["status"] == "disconnected" else None)(api.host("hpf-net-host")))
        detected = time.monotonic() - started
        assert host["failures"] >= 3 and "unreachable" in host["last_error"]
        # the fault was the one meant: a refusal, or silence until the poll timeout
        assert ("Timeout" in host["last_error"]) == (fault == "blackholed"), host
        assert api.claims() == before                   # no VM or claim touched
        # /metrics, whichever of the 2 workers answers, counts every failed poll of the host
        assert poll_failures(api, "hpf-net-host") >= host["failures"]
        assert agent_domains(agent) == domains_before   # nor the domains on the host

        relay.start() if fault == "refused" else nets.heal()
        wait_until("the host to reconnect", lambda: api.host("hpf-net-host")["status"]
                   == "connected")
        assert api.claims() == before
        assert agent_domains(agent) == domains_before
        print(f"\nfault: agent {fault}: disconnected after {detected:.1f} s "
              f"(interval 1 s, timeout 1 s, max_failures 3)")
    finally:
        for part in (controller, relay, agent):
            if part is not None:
                part.kill() if part is relay else part.stop()
        nets.delete()


def poll_failures(api, host_id):
    status, text = api("GET", "/metrics")
    assert status == 200
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "hostplane_controller_poll_failures"
               for sample in family.samples
               if sample.name.endswith("_total") and sample.labels.get("host") == host_id)


# --- database locked or gone ----------------------------------------------------------------
def test_sqlite_held_exclusively_by_another_process_answers_503_and_changes_nothing(tmp_path):
    agent = LoopbackAgent(tmp_path, "hpf-db-host", gpu_host())
    config = controller_config(tmp_path, database={"busy_timeout_s": 0.5})
    app = controller_app(config)
    client = app.test_client()
    locker = None
    try:
        register(client, agent)
        path = config["database"]["url"].split(":///", 1)[1]
        locker = subprocess.Popen([sys.executable, "-c", (
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        assert locker.stdout.readline().strip() == "locked"
        device = "/v1/devices/hpf-db-host/0000:3b:00.0"
        for method, url, body in (("patch", device, {"name": "renamed"}),
                                  ("post", "/v1/vms", {"name": "hpf-locked", "vcpus": 1,
                                                       "memory_mib": 64, "gpus": [GPU]})):
            answer = getattr(client, method)(url, headers=ADMIN, json=body)
            assert answer.status_code == 503, answer.get_json()
            assert answer.get_json()["error"]["code"] == "database_unavailable"
            assert int(answer.headers["Retry-After"]) > 0
        listed = client.get("/v1/devices", headers=ADMIN)   # WAL: readers still read
        assert listed.status_code == 200
        locker.communicate("", timeout=10)
        locker = None
        gpu = client.get(device, headers=ADMIN).get_json()
        assert gpu["name"] != "renamed" and gpu["status"] == "ready" and gpu["vm"] is None
        assert client.get("/v1/vms/hpf-locked", headers=ADMIN).status_code == 404
        assert client.patch(device, headers=ADMIN, json={"name": "renamed"}).status_code == 200
    finally:
        if locker is not None:
            locker.kill()
            locker.wait()
        agent.stop()
        app.extensions["hostplane_controller"].close()


def test_postgresql_gone_answers_503_and_recovers_when_it_returns(tmp_path):
    name, url = postgres_database()
    port = free_port()
    relay = Relay(f"127.0.0.1:{port}", "127.0.0.1:5432")
    agent = LoopbackAgent(tmp_path, "hpf-pg-host", gpu_host())
    app = None
    try:
        config = controller_config(tmp_path, url.replace(":5432/", f":{port}/"),
                                   database={"connect_timeout_s": 2})
        app = controller_app(config)
        client = app.test_client()
        register(client, agent)
        device = "/v1/devices/hpf-pg-host/0000:3b:00.0"
        relay.kill()
        for method, path, body in (("get", "/v1/devices", None),
                                   ("patch", device, {"name": "renamed"})):
            answer = getattr(client, method)(path, headers=ADMIN, json=body)
            assert answer.status_code == 503, (path, answer.get_data(as_text=True)[:300])
            assert answer.get_json()["error"]["code"] == "database_unavailable"
            assert answer.headers["Retry-After"]
        health = client.get("/v1/health").get_json()
        assert health["status"] == "degraded" and health["database"]["ok"] is False
        # the scrape still succeeds, saying so (the alert rules page on it)
        metrics = client.get("/metrics").get_data(as_text=True)
        assert "\nhostplane_controller_database_up 0.0\n" in metrics
        assert "hostplane_controller_host_status{" not in metrics
        relay.start()
        assert client.get(device, headers=ADMIN).get_json()["name"] != "renamed"
        assert client.patch(device, headers=ADMIN, json={"name": "renamed"}).status_code == 200
        assert "\nhostplane_controller_database_up 1.0\n" in client.get("/metrics").get_data(
            as_text=True)
    finally:
        relay.kill()
        agent.stop()
        if app is not None:
            app.extensions["hostplane_controller"].close()
        drop_postgres_database(name)

