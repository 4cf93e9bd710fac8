"""Input that can never be valid is refused at the edge of both services, changes nothing,
and never becomes a 500 — including on PostgreSQL, which cannot even store a NUL.

Each of these was a 500 (or a stalled worker) before:
- a 2 KB body of 1,000 nested `[` reached the JSON parser's recursion limit, on every
  body-taking endpoint of both services (and `POST /v1/networks` read it before any check);
- a body of `"` followed by thousands of `\\"` took seconds to scan (quadratic);
- NUL in a name or a query value reached PostgreSQL, and `POST /v1/hosts/x%00/events`
  did so before authentication, with any bearer string;
- a tenant token equal to the admin's (or another tenant's) was accepted at start;
- `PATCH /v1/hosts` with `cluster: ""`, a host URL with port 99999, an agent that refuses
  the token it is registered with, were all taken.
"""

import pytest

from controller.config import check_serving_config, load_controller_config
from hostplane.config import ConfigError
from tests.conftest import AUTH, agent_config
from tests.hosts import small_gpu_host
from tests.synthetic import write_proc, write_sysfs_tree
from tests.test_controller_support import (ADMIN, ADMIN_TOKEN, TENANT, controller_app,
                                           controller_config, drop_postgres_database,
                                           postgres_database, two_host_world)

NESTED = ["[" * 1000, '{"a":' * 1000, "[" * 5000 + "]" * 5000, '{"type": ' + "[" * 800]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with two_host_world(tmp_path_factory.mktemp("input")) as parts:
        yield parts


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    from agent.app import create_app
    tmp_path = tmp_path_factory.mktemp("input-agent")
    host = small_gpu_host()
    app = create_app(agent_config(tmp_path, libvirt={"uri": "test:///default"}, host={
        "sysfs_root": write_sysfs_tree(host, tmp_path / "sys"),
        "proc_root": write_proc(str(tmp_path / "proc"), host)}))
    yield app.test_client()
    app.extensions["hostplane_agent"].close()


def _body_routes(client, headers):
    """(method, path) of every body-taking operation the service publishes, with a
    harmless value in each path parameter."""
    spec = client.get("/v1/openapi.json", headers=headers).get_json()
    routes = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                concrete = path
                for name in ("name", "host_id", "device_id", "id"):
                    concrete = concrete.replace("{" + name + "}", "x1")
                routes.append((method.upper(), concrete))
    assert len(routes) >= 5, routes
    return routes


@pytest.mark.parametrize("service", ["agent", "controller"])
def test_deeply_nested_bodies_are_400_on_every_endpoint_that_takes_a_body(
        service, agent, world):
    client, headers = (agent, AUTH) if service == "agent" else (world[1], ADMIN)
    for method, path in _body_routes(client, headers):
        for body in NESTED:
            for content_type in ("application/json", "text/plain"):
                answer = client.open(path, method=method, data=body, headers={
                    **headers, "Content-Type": content_type})
                assert answer.status_code in (400, 404), (method, path, answer.status_code)
                assert answer.get_json()["error"]["code"] in (
                    "invalid_json", "invalid_name", "invalid_id", "not_found"), answer.data


@pytest.mark.parametrize("service", ["agent", "controller"])
def test_a_body_built_to_make_the_scan_slow_is_refused_at_once(service, agent, world):
    client, headers = (agent, AUTH) if service == "agent" else (world[1], ADMIN)
    body = '{"name": "' + '\\"' * 100_000   # 200 KB, under the body limit, never closed
    answer = client.post("/v1/vms", data=body, headers={**headers,
                                                        "Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_json"


def test_control_characters_in_body_strings_are_refused_and_change_nothing(world):
    _, client, _ = world
    for name in ("vm\u0000x", "vm\nx", "vm\u007f"):
        answer = client.post("/v1/vms", headers=ADMIN, json={
            "name": name, "vcpus": 1, "memory_mib": 64})
        assert answer.status_code == 400, answer.get_json()
    answer = client.patch("/v1/devices/host-a/0000:3b:00.0", headers=ADMIN,
                          json={"name": "GPU\u0000"})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["details"]["field"] == "name"
    device = client.get("/v1/devices/host-a/0000:3b:00.0", headers=ADMIN).get_json()
    assert "\u0000" not in device["name"]
    assert client.get("/v1/vms", headers=ADMIN).get_json()["vms"] == []


def test_a_body_is_read_as_json_whatever_its_content_type(world):
    _, client, _ = world
    answer = client.post("/v1/schedule/explain", headers=ADMIN,
                         data='{"name": "vm-ct", "vcpus": 1, "memory_mib": 64}')
    assert answer.status_code == 200, answer.get_json()
    broken = client.post("/v1/schedule/explain", headers=ADMIN, data="name=vm-ct")
    assert broken.status_code == 400
    assert "Content-Type: application/json" in broken.get_json()["error"]["message"]


def test_nul_in_paths_and_query_values_is_400_before_postgresql_or_authentication(tmp_path):
    database, url = postgres_database()
    app = controller_app(controller_config(tmp_path, database_url=url))
    client = app.test_client()
    try:
        for path in ("/v1/vms/x%00", "/v1/devices?host=x%00", "/v1/devices?type=gpu%00",
                     "/v1/hosts/x%00", "/v1/vms?x%00=1"):
            answer = client.get(path, headers=ADMIN)
            assert answer.status_code == 400, (path, answer.status_code, answer.data)
        for token in ("anything", ADMIN_TOKEN):
            answer = client.post("/v1/hosts/x%00/events", json={"host_id": "x"},
                                 headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 400, answer.data
        answer = client.post("/v1/hosts/nosuch/events", json={"host_id": "nosuch"},
                             headers={"Authorization": "Bearer anything"})
        assert answer.status_code == 401
    finally:
        app.extensions["hostplane_controller"].close()
        drop_postgres_database(database)


def test_a_tenant_token_equal_to_another_principals_is_refused_at_start():
    for tenants in ({"acme": ADMIN_TOKEN}, {"acme": "token-one-1", "beta": "token-one-1"}):
        config = load_controller_config(path="/nonexistent", environ={},
                                        overrides={"server": {"admin_token": ADMIN_TOKEN}})
        config["tenants"] = tenants
        with pytest.raises(ConfigError, match="same as"):
            check_serving_config(config)


def test_careless_host_changes_are_400_and_change_nothing(world):
    _, client, agents = world
    answer = client.patch("/v1/hosts/host-a", headers=ADMIN, json={"cluster": ""})
    assert answer.status_code == 400
    assert client.get("/v1/hosts/host-a", headers=ADMIN).get_json()["cluster"] == "default"
    for url in ("http://127.0.0.1:99999", "http://127.0.0.1:0", "http://[::1]]:80"):
        answer = client.post("/v1/hosts", headers=ADMIN, json={"url": url, "token": "t0ken"})
        assert answer.status_code == 400, (url, answer.get_json())
    answer = client.post("/v1/vms", headers=ADMIN, json={
        "name": "vm-aa", "vcpus": 1, "memory_mib": 64, "anti_affinity_group": ""})
    assert answer.status_code == 400


def test_registering_an_agent_with_a_token_it_refuses_stores_nothing(tmp_path):
    from tests.test_controller_support import LoopbackAgent, gpu_host
    agent = LoopbackAgent(tmp_path, "tok-host", gpu_host())
    app = controller_app(controller_config(tmp_path))
    client = app.test_client()
    try:
        answer = client.post("/v1/hosts", headers=ADMIN,
                             json={"url": agent.url, "token": "not-the-agents-token"})
        assert answer.status_code == 400
        assert answer.get_json()["error"]["code"] == "agent_token_refused"
        assert client.get("/v1/hosts", headers=ADMIN).get_json()["hosts"] == []
    finally:
        agent.stop()
        app.extensions["hostplane_controller"].close()


def test_a_tenant_never_reads_the_name_of_a_vm_that_is_not_its_own(world):
    _, client, agents = world
    for device in ("0000:3b:00.0", "0000:3b:00.1"):
        client.patch(f"/v1/devices/host-a/{device}", headers=ADMIN, json={"shared": True})
    try:
        made = client.post("/v1/vms", headers=ADMIN, json={
            "name": "secret-admin-vm", "host": "host-a", "vcpus": 1, "memory_mib": 64,
            "start": False, "gpus": [{"id": "0000:3b:00.0"}]})
        assert made.status_code == 201, made.get_json()
        ask = {"name": "t-vm", "vcpus": 1, "memory_mib": 64, "gpus": [{"id": "0000:3b:00.0"}]}
        explained = client.post("/v1/schedule/explain", headers=TENANT, json=ask)
        refused = client.post("/v1/vms", headers=TENANT, json=ask)
        taken = client.post("/v1/vms", headers=TENANT, json={**ask, "name": "secret-admin-vm",
                                                            "gpus": []})
        for answer in (explained, refused):
            assert b"secret-admin-vm" not in answer.data, answer.data
        assert "another VM" in str(explained.get_json()["rejected"])
        hidden = [r for r in explained.get_json()["reasons"]["host-a"]
                  if "another VM" in r["message"]]
        assert hidden and {r["code"] for r in hidden} == {"device_attached"}
        assert refused.get_json()["error"]["details"]["reasons"]["host-a"] == hidden
        assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "name_taken"
        assert "exists" not in taken.get_json()["error"]["message"]   # nor whose it is
        # a domain made on the agent behind the controller's back, before any poll:
        # the agent's own refusal names it, and the tenant must not read that either
        assert client.delete("/v1/vms/secret-admin-vm", headers=ADMIN).status_code == 204
        agents["host-a"].app.test_client().post("/v1/vms", headers=AUTH, json={
            "name": "secret-domain", "vcpus": 1, "memory_mib": 64,
            "devices": [{"type": "pci", "id": "0000:3b:00.0"}]})
        refused = client.post("/v1/vms", headers=TENANT, json=ask)
        assert refused.status_code == 409, refused.get_json()
        assert b"secret-domain" not in refused.data, refused.data
        assert "vm" not in refused.get_json()["error"]["details"]
    finally:
        agents["host-a"].app.test_client().delete("/v1/vms/secret-domain", headers=AUTH)
        for device in ("0000:3b:00.0", "0000:3b:00.1"):
            client.patch(f"/v1/devices/host-a/{device}", headers=ADMIN, json={"shared": False})


def test_a_tenant_never_reads_an_agent_address_or_hypervisor_uri(world):
    """Any agent refusal passed on to a tenant (here a live detach the hypervisor cannot
    do) loses the agent's URL and the libvirt URI and paths; the admin reads them."""
    _, client, agents = world
    for device in ("0000:3b:00.0", "0000:3b:00.1"):
        client.patch(f"/v1/devices/host-a/{device}", headers=ADMIN, json={"shared": True})
    try:
        made = client.post("/v1/vms", headers=TENANT, json={
            "name": "t-live", "vcpus": 1, "memory_mib": 64, "host": "host-a",
            "gpus": [{"id": "0000:3b:00.0"}]})
        assert made.status_code == 201, made.get_json()
        path = "/v1/vms/t-live/devices/host-a/0000:3b:00.0"
        refused = client.delete(path, headers=TENANT)
        assert refused.status_code == 409, refused.get_json()
        error = refused.get_json()["error"]
        assert error["code"] == "not_supported_by_libvirt"
        assert "agent" not in error["details"], error
        assert agents["host-a"].url.encode() not in refused.data, refused.data
        assert b"test://" not in refused.data and b"/tmp/" not in refused.data, refused.data
        admin = client.delete(path, headers=ADMIN).get_json()["error"]
        assert admin["details"]["agent"] == agents["host-a"].url and "test://" in admin["message"]
    finally:
        client.delete("/v1/vms/t-live", headers=ADMIN)
        for device in ("0000:3b:00.0", "0000:3b:00.1"):
            client.patch(f"/v1/devices/host-a/{device}", headers=ADMIN, json={"shared": False})
