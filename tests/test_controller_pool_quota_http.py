"""100 racing tenant creates against a pool quota of 3, over HTTP: the controller under
gunicorn (2 worker processes, 16 threads each) on SQLite and on PostgreSQL, four real
agents (two NIC VFs each) creating the VMs, each create pinned to one of them so that
claims on different hosts run at once. Exactly 3 VMs, 3 VFs held."""

from collections import Counter

import requests

from tests.conftest import TOKEN as AGENT_TOKEN
from tests.test_controller_support import (ADMIN, TENANT, GunicornController, LoopbackAgent,
                                           gpu_host)
from tests.support import all_at_once
from tests.test_controller_support import database_url  # noqa: F401 - fixture

RACERS, QUOTA = 100, 3


def test_100_racing_tenant_creates_over_http_against_a_quota_of_3(tmp_path, database_url):
    agents = [LoopbackAgent(tmp_path, f"quota-host-{i}", gpu_host()) for i in range(4)]
    controller = GunicornController(database_url)
    url = controller.url
    try:
        for agent in agents:
            answer = requests.post(url + "/v1/hosts", headers=ADMIN, timeout=30,
                                   json={"url": agent.url, "token": AGENT_TOKEN})
            assert answer.status_code == 201, answer.text
        assert requests.post(url + "/v1/device-pools", headers=ADMIN, timeout=30, json={
            "name": "vfs", "vendor_id": "8086", "device_id": "1889", "vf_of": "8086:1593"}
            ).json()["size"] == 8
        assert requests.put(url + "/v1/device-pools/vfs/shares/acme", headers=ADMIN,
                            timeout=30, json={"max_count": QUOTA}).ok
        def create(index):
            answer = requests.post(url + "/v1/vms", headers=TENANT, timeout=120, json={
                "name": f"q-{index}", "vcpus": 1, "memory_mib": 64, "start": False,
                "devices": [{"pool": "vfs"}], "host": f"quota-host-{index % 4}"})
            return (answer.status_code, None if answer.ok
                    else answer.json()["error"]["code"])

        counts = Counter(all_at_once(RACERS, create))
        assert counts[(201, None)] == QUOTA, counts
        assert set(counts) <= {(201, None), (403, "quota_exceeded"),
                               (409, "claim_contended"), (422, "unplaceable")}, counts
        pool = requests.get(url + "/v1/device-pools/vfs", headers=ADMIN, timeout=30).json()
        assert pool["attached"] == QUOTA and pool["shares"][0]["used"] == QUOTA
        vms = requests.get(url + "/v1/vms", headers=TENANT, timeout=30).json()["vms"]
        assert len(vms) == QUOTA and all(len(vm["devices"]) == 1 for vm in vms)
    finally:
        controller.stop()
        for agent in agents:
            agent.stop()
