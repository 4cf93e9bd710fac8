"""Schemathesis against a real controller (gunicorn, SQLite) with a real agent registered.

The agent serves a synthetic host on libvirt's test:///default and builds networks in a
namespace of the run's own; every URL the fuzzer offers the controller to dial becomes the
agent's own, so the run never reaches past 127.0.0.0/8. The long run:

    HOSTPLANE_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_fuzz_controller.py -s
"""

import pytest
import requests

from tests.conftest import TOKEN as AGENT_TOKEN
from tests.hardening import fuzz_service, private_netns, synthetic_agent_env
from tests.test_controller_support import (ADMIN, ADMIN_TOKEN, TENANT, TENANT_TOKEN,
                                           GunicornController)
from tests.support import free_port
from tests.umockdev_bed import AgentProcess

def dial_only_the_agent(agent_url):
    def rewrite(case):
        if isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
            case.body["url"] = agent_url
    return rewrite


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-controller")
    with private_netns("hpfuzzc") as netns:
        agent = AgentProcess(synthetic_agent_env(tmp / "agent", "fuzz-host-a", netns),
                             AGENT_TOKEN, workers=1)
        controller = GunicornController(f"sqlite:///{tmp}/controller.db", workers=1, threads=4)
        try:
            answer = requests.post(controller.url + "/v1/hosts", headers=ADMIN, timeout=30,
                                   json={"url": agent.url, "token": AGENT_TOKEN})
            assert answer.status_code == 201, answer.text
            yield controller, answer.json()["id"], agent.url
        finally:
            controller.stop()
            agent.stop()


@pytest.mark.parametrize("who", ["admin", "tenant"])
def test_fuzzed_controller_never_fails_and_always_answers_in_the_envelope(world, who):
    controller, host_id, agent_url = world
    headers = ADMIN if who == "admin" else TENANT
    report = fuzz_service(controller.url, headers,
                          secrets=[ADMIN_TOKEN, TENANT_TOKEN, AGENT_TOKEN],
                          known=[{"host_id": host_id, "device_id": "0000:3b:00.0"},
                                 {"host_id": host_id, "device_id": "0781:5567:4C530001"}],
                          rewrite=dial_only_the_agent(agent_url))
    print(f"\ncontroller fuzz ({who}): {report.summary()}; {report.unauthenticated} "
          "unauthenticated calls refused with 401")
    assert report.cases >= 15 * 2 * 5, report.summary()
    assert not report.problems, "\n".join([report.summary()] + report.problem_lines())
    assert requests.get(controller.url + "/v1/health", timeout=10).status_code == 200


@pytest.mark.parametrize("token", ["\u2603-snowman-token", "line\nbreak-token"])
def test_registering_with_a_token_that_cannot_be_a_header_is_a_400(world, token):
    controller, _, _ = world
    answer = requests.post(controller.url + "/v1/hosts", headers=ADMIN, timeout=30,
                           json={"url": f"http://127.0.0.1:{free_port()}", "token": token})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] in ("invalid_request", "bad_request")
