"""Schemathesis against a real agent (gunicorn, synthetic host, libvirt test:///default).

Networks are built inside a network namespace made for the run, so a fuzzed `PUT
/v1/networks/<name>` never touches the machine's own links. The long run:

    HOSTPLANE_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_fuzz_agent.py -s
"""

import pytest
import requests

from tests.conftest import TOKEN
from tests.hardening import fuzz_service, private_netns, synthetic_agent_env
from tests.umockdev_bed import AgentProcess


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    # one worker: libvirt's test driver keeps its domains per connection (per process)
    with private_netns() as netns:
        process = AgentProcess(synthetic_agent_env(tmp_path_factory.mktemp("fuzz-agent"),
                                                   "fuzz-host", netns), TOKEN, workers=1)
        yield process
        log = process.stop()
    if "Traceback" in log:
        print(log[-4000:])


def test_fuzzed_agent_never_fails_and_always_answers_in_the_envelope(agent):
    made = requests.put(f"{agent.url}/v1/networks/fuzznet", headers=agent.headers, timeout=30,
                        json={"type": "vxlan", "vni": 5001, "local_ip": "127.0.0.1"})
    assert made.status_code == 201, made.text
    # A fuzzed DELETE must never ask for disk files to be removed: the paths are the fuzzer's.
    report = fuzz_service(agent.url, agent.headers, secrets=[TOKEN],
                          fixed_query={"/v1/vms/{name}": {"delete_storage": "false"}},
                          known=[{"name": "test"}, {"name": "fuzznet"},
                                 {"name": "test", "device_id": "0000:3b:00.0"},
                                 {"device_id": "0781:5567:4C530001"}])
    print(f"\nagent fuzz: {report.summary()}; {report.unauthenticated} unauthenticated calls "
          "refused with 401")
    assert report.cases >= 20 * 2 * 5, report.summary()  # every operation got cases
    assert not report.problems, "\n".join([report.summary()] + report.problem_lines())
    assert agent.get("/v1/health").status_code == 200  # still serving after all of it
