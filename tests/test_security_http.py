"""What a security reviewer checks at the HTTP edge of both services.

- a body over `[server] max_body_kb` is refused with 413 in the envelope, before any view,
  whether sent with a Content-Length or chunked, and the service keeps serving;
- tokens are compared with `hmac.compare_digest`, and the controller compares the token
  sent with every configured one, so how long a refusal takes says nothing about which
  token came close;
- no answer, error or success, carries a token: not the agent's, not the admin's, not a
  tenant's, and not the wrong one a caller just sent.
"""

import hmac
import re

import pytest
import requests

from hostplane import auth
from tests.conftest import AUTH, TOKEN, agent_config
from tests.hardening import synthetic_agent_env
from tests.test_controller_support import (ADMIN, ADMIN_TOKEN, TENANT, TENANT_TOKEN,
                                           two_host_world)
from tests.umockdev_bed import AgentProcess

LIMIT_KB = 8


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    env = synthetic_agent_env(tmp_path_factory.mktemp("security"), "sec-host",
                              max_body_kb=str(LIMIT_KB))
    process = AgentProcess(env, TOKEN)
    yield process
    process.stop()


@pytest.fixture
def world(tmp_path):
    with two_host_world(tmp_path) as found:
        yield found


def _too_large(answer):
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["code"] == "request_entity_too_large" and error["message"]


def test_a_body_over_the_limit_is_413_in_the_envelope(agent):
    big = '{"name": "x", "pad": "' + "a" * (LIMIT_KB * 1024) + '"}'
    headers = {**AUTH, "Content-Type": "application/json"}
    _too_large(requests.post(agent.url + "/v1/vms", data=big, headers=headers, timeout=30))
    _too_large(requests.put(agent.url + "/v1/networks/n1", data=big, headers=headers,
                            timeout=30))
    chunks = (big[i:i + 1000].encode() for i in range(0, len(big), 1000))  # no Content-Length
    _too_large(requests.post(agent.url + "/v1/vms", data=chunks, headers=headers, timeout=30))
    small = requests.post(agent.url + "/v1/vms", json={"name": "x"}, headers=AUTH, timeout=30)
    assert small.status_code == 400  # under the limit the body reaches validation
    assert agent.get("/v1/devices").status_code == 200


def test_the_controller_limits_bodies_too(world):
    app, client, _ = world
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit == 256 * 1024  # [server] max_body_kb's default
    answer = client.post("/v1/vms", headers=ADMIN, data="x" * (limit + 1),
                         content_type="application/json")
    assert answer.status_code == 413
    assert answer.get_json()["error"]["code"] == "request_entity_too_large"


@pytest.fixture
def compare_spy(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(given, expected):
        calls.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    return calls


def test_the_agent_compares_its_token_in_constant_time(tmp_path, compare_spy):
    from agent.app import create_app
    app = create_app(agent_config(tmp_path, libvirt={"uri": "test:///default"}), start=False)
    client = app.test_client()
    for guess in (TOKEN[:-1] + "X", "short"):
        answer = client.get("/v1/host", headers={"Authorization": f"Bearer {guess}"})
        assert answer.status_code == 401
    assert compare_spy == [((TOKEN[:-1] + "X").encode(), TOKEN.encode()),
                           (b"short", TOKEN.encode())]
    app.extensions["hostplane_agent"].close()


def test_the_controller_compares_the_token_with_every_configured_one(world, compare_spy):
    _, client, _ = world
    for headers in (ADMIN, TENANT, {"Authorization": "Bearer nobody-0123456789"}):
        compare_spy.clear()
        client.get("/v1/hosts", headers=headers)
        compared = sorted(expected for _, expected in compare_spy)
        assert compared == sorted([ADMIN_TOKEN.encode(), TENANT_TOKEN.encode()]), headers


def _carries_a_token(answer, secrets):
    text = answer.get_data(as_text=True) + " ".join(answer.headers.values())
    return [secret for secret in secrets if secret in text]


def test_no_controller_answer_reveals_a_token(world):
    app, client, agents = world
    secrets = [TOKEN, ADMIN_TOKEN, TENANT_TOKEN]  # TOKEN is what both agents registered with
    host_id = next(iter(agents))
    paths = ["/", "/metrics", "/v1/health", "/v1/openapi.json", "/v1/hosts",
             f"/v1/hosts/{host_id}", "/v1/devices", f"/v1/devices/{host_id}/0000:3b:00.0",
             "/v1/vms", "/v1/networks", "/v1/hosts/nope"]
    checked = 0
    for headers in (ADMIN, TENANT, {"Authorization": "Bearer guessed-secret-42"}, {}):
        for path in paths:
            answer = client.get(path, headers=headers)
            assert not _carries_a_token(answer, secrets + ["guessed-secret-42"]), path
            checked += 1
    assert checked == 4 * len(paths)
    assert app.extensions["hostplane_controller"]  # the world really had hosts registered
    listed = client.get("/v1/hosts", headers=ADMIN).get_json()
    hosts = listed["hosts"] if isinstance(listed, dict) else listed
    assert len(hosts) == 2 and all("token" not in host for host in hosts)


def test_no_agent_answer_reveals_its_token(agent):
    document = agent.get("/v1/openapi.json").json()
    gets = [re.sub(r"\{[^}]+\}", "x", path) for path, ops in document["paths"].items()
            if "get" in ops]
    gets += ["/v1/devices/pci/0000:3b:00.0", "/v1/vms/test", "/v1/nothing-here"]
    for headers in (AUTH, {"Authorization": "Bearer guessed-secret-42"}):
        for path in gets:
            answer = requests.get(agent.url + path, headers=headers, timeout=30)
            text = answer.text + " ".join(answer.headers.values())
            assert TOKEN not in text and "guessed-secret-42" not in text, path
    assert len(gets) >= 12
