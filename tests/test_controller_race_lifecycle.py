"""Hundreds of creates for scarce GPUs, racing deletes and re-creates of the winners' names,
with one agent frozen past the controller's timeout in the middle: after it settles,
every agent domain is known to the controller, every claim matches a domain, no device is
held twice, and no answer was a 500 or a `database_unavailable` while the database was up.

Three setups: SQLite under one 4-worker controller; PostgreSQL under one 4-worker
controller; PostgreSQL under two controller processes (each polling and settling). Real
gunicorn controllers and agents (libvirt `test:///default`), SIGSTOP for the frozen agent.
`HOSTPLANE_RACE_ROUNDS=10` runs each setup ten times in a row (CI runs one).
"""

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from controller.db import upgrade
from tests.conftest import TOKEN as AGENT_TOKEN
from tests.test_controller_lifecycle import assert_claims_match_domains
from tests.test_controller_support import ADMIN, drop_postgres_database, postgres_database
from tests.support import free_port, wait_until
from tests.test_faults_controller_support import AgentProcess, Api, ControllerProcess, agent_domains

ROUNDS = int(os.environ.get("HOSTPLANE_RACE_ROUNDS", "1"))
OPERATIONS, THREADS, NAMES = 300, 32, 12
AGENTS = 3   # two GPUs each: six for twelve names
FROZEN_HOST = "hpr-host-0"
GPU = {"vendor_id": "10de", "device_id": "1eb8"}
# What a racing caller may be told; a 500, or a 503 other than the frozen agent's, is a bug.
EXPECTED = {(201, None), (204, None), (404, "vm_not_found"), (409, "name_taken"),
            (409, "vm_busy"), (409, "device_busy"), (409, "claim_contended"),
            (409, "vm_gone"), (409, "operation_cancelled"), (422, "unplaceable"),
            (503, "agent_unreachable")}


@pytest.mark.parametrize("setup", ["sqlite", "postgresql", "postgresql-two-controllers"])
def test_racing_creates_deletes_and_a_late_agent_leave_every_claim_matching_a_domain(
        tmp_path, setup):
    database = None
    if setup == "sqlite":
        url = f"sqlite:///{tmp_path}/race.db"
    else:
        database, url = postgres_database()
    upgrade(url)
    agents, controllers = [], []
    try:
        for index in range(AGENTS):
            base = tmp_path / f"agent-{index}"
            base.mkdir()
            agents.append(AgentProcess(base, f"hpr-host-{index}", f"127.0.0.1:{free_port()}"))
            requests.delete(agents[-1].url + "/v1/vms/test", timeout=30,   # the driver's own
                            headers={"Authorization": f"Bearer {AGENT_TOKEN}"})
        count = 2 if setup == "postgresql-two-controllers" else 1
        for index in range(count):
            base = tmp_path / f"controller-{index}"
            base.mkdir()
            controllers.append(ControllerProcess(base, url, workers=4 // count))
        api = Api(controllers[0])
        for agent in agents:
            assert api("POST", "/v1/hosts", {"url": agent.url, "token": AGENT_TOKEN})[0] == 201
        for round_number in range(ROUNDS):
            answers = _race(controllers, agents[0], random.Random(round_number))
            counts = Counter(answers)
            print(f"\nrace {setup} round {round_number + 1}/{ROUNDS}: {dict(counts)}")
            assert set(counts) <= EXPECTED, counts
            assert counts[(201, None)] >= 6 and counts[(204, None)] >= 1, counts
            assert counts[(503, "agent_unreachable")] >= 1, counts   # the freeze did bite
            _settled(api)
            assert_claims_match_domains(api, *agents)
            assert api("GET", "/v1/orphans")[1] == {"orphans": [], "unreachable": {}}
            for agent in agents:   # each GPU in one domain at most, on every host
                held = Counter(d for _, devices in agent_domains(agent).values()
                               for d in devices)
                assert set(held.values()) <= {1}, held
            _clear(api)
    finally:
        for process in controllers + agents:
            process.stop()
        if database:
            drop_postgres_database(database)


def _race(controllers, frozen, rng):
    """OPERATIONS creates and deletes over NAMES names by THREADS callers, spread over
    the controllers; `frozen` is stopped once a third of them have answered, for longer
    than the agent timeout, and meanwhile one create is sent to it for sure."""
    plan = [(rng.random() < 0.55, rng.choice(range(NAMES)), rng.choice(controllers), None)
            for _ in range(OPERATIONS)]
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=THREADS + 1))
    answered, lock, extra = [0], threading.Lock(), []

    def call(step):
        create, number, controller, host = step
        name = f"hpr-vm-{number}"
        try:
            if create:
                body = {"name": name, "vcpus": 1, "memory_mib": 64, "start": False,
                        "gpus": [] if host else [GPU]}
                answer = session.post(controller.url + "/v1/vms", headers=ADMIN, timeout=120,
                                      json={**body, "host": host} if host else body)
            else:
                answer = session.delete(controller.url + f"/v1/vms/{name}", headers=ADMIN,
                                        timeout=120)
        except requests.RequestException as exc:
            return (type(exc).__name__, None)
        finally:
            with lock:
                answered[0] += 1
                if answered[0] == OPERATIONS // 3:
                    freezer.start()
        code = answer.json()["error"]["code"] if answer.status_code >= 400 else None
        return (answer.status_code, code)

    def freeze():
        frozen.freeze()
        try:   # one create surely meets the frozen agent (its name outside the race's)
            extra.append(call((True, f"frozen-{rng.randrange(10 ** 6)}", controllers[0],
                               FROZEN_HOST)))
            time.sleep(2)   # the controllers' agent timeout is 6 s (poll timeout 1 s)
        finally:
            frozen.thaw()
    freezer = threading.Thread(target=freeze)
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        answers = list(pool.map(call, plan))
    freezer.join(timeout=120)
    return answers + extra


def _settled(api):
    """Until no VM has an operation with an agent (the poller settles the late ones)."""
    def quiet():
        vms = api("GET", "/v1/vms")[1]["vms"]
        return not any(vm["state"] in ("creating", "deleting", "moving") for vm in vms)
    wait_until("every VM operation to settle", quiet, timeout=240, every=1)


def _clear(api):
    for vm in api("GET", "/v1/vms")[1]["vms"]:
        assert api("DELETE", f"/v1/vms/{vm['name']}")[0] == 204
