"""Schemathesis against a real agent (gunicorn, synthetic host, libvirt test:///default).

Networks are built inside a network namespace made for the run, so a fuzzed `PUT
/v1/networks/<name>` never touches the machine's own links. The long run:

    HOSTPLANE_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_fuzz_agent.py -s
"""

import os
import subprocess

import pytest
import requests

from tests.conftest import TOKEN
from tests.fuzzing import fuzz_service
from tests.hosts import small_gpu_host
from tests.synthetic import write_proc, write_sysfs_tree
from tests.umockdev_bed import AgentProcess

NETNS = f"hpfuzz{os.getpid()}"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-agent")
    host = small_gpu_host()
    env = dict(os.environ, HOSTPLANE_SERVER_TOKEN=TOKEN, HOSTPLANE_HOST_ID="fuzz-host",
               HOSTPLANE_HOST_SYSFS_ROOT=write_sysfs_tree(host, tmp / "sys"),
               HOSTPLANE_HOST_PROC_ROOT=write_proc(str(tmp / "proc"), host),
               HOSTPLANE_HOST_STATE_DIR=str(tmp / "state"), HOSTPLANE_HOST_WATCH_UDEV="false",
               HOSTPLANE_LIBVIRT_URI="test:///default", HOSTPLANE_NETWORK_NETNS=NETNS)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)  # a VTEP address
    # one worker: libvirt's test driver keeps its domains per connection (per process)
    process = AgentProcess(env, TOKEN, workers=1)
    yield process
    log = process.stop()
    subprocess.run(["ip", "netns", "delete", NETNS], check=False)
    if "Traceback" in log:
        print(log[-4000:])


def test_fuzzed_agent_never_fails_and_always_answers_in_the_envelope(agent):
    made = requests.put(f"{agent.url}/v1/networks/fuzznet", headers=agent.headers, timeout=30,
                        json={"type": "vxlan", "vni": 5001, "local_ip": "127.0.0.1"})
    assert made.status_code == 201, made.text
    # A fuzzed DELETE must never ask for disk files to be removed: the paths are the fuzzer's.
    report = fuzz_service(agent.url, agent.headers, secrets=[TOKEN],
                          fixed_query={"/v1/vms/{name}": {"delete_storage": "false"}},
                          known=[{"name": "test"}, {"name": "fuzznet", "device_id": "0000:3b:00.0"},
                                 {"device_id": "0781:5567:4C530001"}])
    print(f"\nagent fuzz: {report.summary()}; {report.unauthenticated} unauthenticated calls "
          "refused with 401")
    assert report.cases >= 20 * 2 * 5, report.summary()  # every operation got cases
    assert not report.problems, "\n".join([report.summary()] + report.problem_lines())
    assert agent.get("/v1/health").status_code == 200  # still serving after all of it
