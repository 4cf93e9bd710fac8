"""1,000 concurrent creates for 8 free GPUs end as exactly 8 VMs, on SQLite and PostgreSQL.

The controller runs under gunicorn (2 worker processes, 16 threads each) as in production;
four real agents (two GPUs each, libvirt's in-memory `test:///default`) create the VMs.
"""

from collections import Counter

import requests

from tests.conftest import AUTH as AGENT_AUTH, TOKEN as AGENT_TOKEN
from tests.support import all_at_once
from tests.test_controller_support import (ADMIN, GunicornController, LoopbackAgent, gpu_host)
from tests.test_controller_support import database_url  # noqa: F401 - fixture

REQUESTS = 1000
HOSTS = 4   # two GPUs each: 8 in all


def test_1000_concurrent_creates_for_8_gpus_make_exactly_8_vms(tmp_path, database_url):
    agents = [LoopbackAgent(tmp_path, f"race-host-{i}", gpu_host()) for i in range(HOSTS)]
    controller = GunicornController(database_url)
    try:
        for agent in agents:
            answer = requests.post(controller.url + "/v1/hosts", headers=ADMIN, timeout=30,
                                   json={"url": agent.url, "token": AGENT_TOKEN})
            assert answer.status_code == 201, answer.text
        statuses = _race(controller.url)
        counts = Counter(statuses)
        assert counts[201] == 8, counts
        assert set(counts) <= {201, 409, 422}, counts   # never a 500 or a 503

        vms = requests.get(controller.url + "/v1/vms", headers=ADMIN, timeout=30).json()["vms"]
        assert len(vms) == 8
        gpus = requests.get(controller.url + "/v1/devices?type=gpu", headers=ADMIN,
                            timeout=30).json()["devices"]
        holders = [gpu["vm"] for gpu in gpus]
        assert len(gpus) == 8 and all(holders) and len(set(holders)) == 8
        assert {vm["name"] for vm in vms} == set(holders)
        # and on the hosts themselves: each GPU in exactly one domain
        held = Counter()
        for agent in agents:
            for vm in requests.get(agent.url + "/v1/vms", headers=AGENT_AUTH,
                                   timeout=30).json()["vms"]:
                held.update((agent.host_id, d["id"]) for d in vm.get("devices", [])
                            if d["id"].endswith(".0"))
        assert len(held) == 8 and set(held.values()) == {1}, held
    finally:
        controller.stop()
        for agent in agents:
            agent.stop()


def _race(url):
    def create(index):
        body = {"name": f"race-{index}", "vcpus": 1, "memory_mib": 64, "start": False,
                "gpus": [{"vendor_id": "10de", "device_id": "1eb8"}]}
        try:
            return requests.post(url + "/v1/vms", headers=ADMIN, json=body,
                                 timeout=300).status_code
        except requests.RequestException as exc:
            return type(exc).__name__
    return all_at_once(REQUESTS, create)
