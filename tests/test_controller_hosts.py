"""Host registry, polling and the cluster device inventory, against real agents on loopback."""

import pytest

from tests.support import wait_for
from tests.test_controller_support import (ADMIN, NVIDIA_A10, TENANT, gpu_host, poller,
                                           two_host_world)


@pytest.fixture
def world(tmp_path):
    with two_host_world(tmp_path) as parts:
        yield parts


def devices(client, headers=ADMIN, **filters):
    answer = client.get("/v1/devices", headers=headers, query_string=filters)
    assert answer.status_code == 200, answer.get_json()
    return {(d["host_id"], d["id"]): d for d in answer.get_json()["devices"]}


def test_registered_host_is_connected_with_capacity_and_iommu_from_its_agent(world):
    _, client, _ = world
    host = client.get("/v1/hosts/host-b", headers=ADMIN).get_json()
    assert host["status"] == "connected"
    assert host["state"] == "enabled"
    assert host["cpu_threads"] == 64 and host["memory_mib"] == 524288
    assert host["iommu_ready"] is True and host["iommu_enabled"] is True
    assert host["boot_id"]


def test_inventory_lists_every_hosts_devices_with_cluster_fields(world):
    _, client, _ = world
    found = devices(client, type="gpu")
    assert set(found) == {(h, a) for h in ("host-a", "host-b")
                          for a in ("0000:3b:00.0", "0000:af:00.0")}
    gpu = found[("host-b", "0000:3b:00.0")]
    # the agent's names: device_id for a PCI function, product_id for USB only
    assert (gpu["vendor_id"], gpu["device_id"]) == NVIDIA_A10 and "product_id" not in gpu
    assert gpu["state"] == "enabled" and gpu["status"] == "ready" and gpu["vm"] is None
    assert gpu["shared"] is False and gpu["created_at"]
    usb = devices(client, host="host-a", kind="usb")
    assert set(usb) == {("host-a", "0781:5567:4C530001"), ("host-a", "046d:c31c@1-1.2")}
    stick = usb[("host-a", "0781:5567:4C530001")]
    assert (stick["vendor_id"], stick["product_id"]) == ("0781", "5567")
    assert "device_id" not in stick


def test_device_rename_disable_and_share_are_kept(world):
    _, client, _ = world
    answer = client.patch("/v1/devices/host-a/0000:3b:00.0", headers=ADMIN,
                          json={"name": "render-0", "state": "disabled", "shared": True})
    assert answer.status_code == 200
    again = devices(client, host="host-a")[("host-a", "0000:3b:00.0")]
    assert (again["name"], again["state"], again["shared"]) == ("render-0", "disabled", True)


def test_tenant_sees_only_shared_devices_and_cannot_change_them(world):
    _, client, _ = world
    assert devices(client, TENANT) == {}
    client.patch("/v1/devices/host-b/0000:af:00.0", headers=ADMIN, json={"shared": True})
    assert set(devices(client, TENANT)) == {("host-b", "0000:af:00.0")}
    hidden = client.get("/v1/devices/host-a/0000:3b:00.0", headers=TENANT)
    assert hidden.status_code == 404
    refused = client.patch("/v1/devices/host-b/0000:af:00.0", headers=TENANT,
                           json={"shared": False})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "admin_only"
    # recalling the share hides it again
    client.patch("/v1/devices/host-b/0000:af:00.0", headers=ADMIN, json={"shared": False})
    assert devices(client, TENANT) == {}


def test_unchanged_agent_answers_304_and_poll_writes_nothing_new(world):
    app, client, _ = world
    before = client.get("/v1/hosts/host-a", headers=ADMIN).get_json()
    outcomes = poller(app).poll_cycle()
    assert outcomes == {"host-a": "unchanged", "host-b": "unchanged"}
    after = client.get("/v1/hosts/host-a", headers=ADMIN).get_json()
    assert after["generation"] == before["generation"] and after["status"] == "connected"


def test_host_goes_disconnected_after_max_failures_and_back_when_agent_returns(world):
    app, client, agents = world
    port = agents["host-a"].served.port
    agents["host-a"].stop()
    statuses = []
    for _ in range(3):
        poller(app).poll_cycle()
        host = client.get("/v1/hosts/host-a", headers=ADMIN).get_json()
        statuses.append(host["status"])
    assert statuses == ["connected", "connected", "disconnected"]
    assert "unreachable" in host["last_error"]
    assert client.get("/v1/hosts/host-b", headers=ADMIN).get_json()["status"] == "connected"
    agents["host-a"].start(port)
    assert poller(app).poll_cycle()["host-a"] == "resynced"
    assert client.get("/v1/hosts/host-a", headers=ADMIN).get_json()["status"] == "connected"


def test_new_boot_id_resyncs_and_marks_vanished_and_moved_devices_unavailable(world):
    app, client, agents = world
    changed = gpu_host()
    changed.pci = [f for f in changed.pci if not f.address.startswith("0000:af:00.")]
    changed.function("0000:3b:00.0").device = "2236"   # another GPU model at the old address
    old_boot = client.get("/v1/hosts/host-a", headers=ADMIN).get_json()["boot_id"]
    agents["host-a"].restart(changed)
    assert poller(app).poll_cycle()["host-a"] == "resynced"
    host = client.get("/v1/hosts/host-a", headers=ADMIN).get_json()
    assert host["boot_id"] != old_boot
    found = devices(client, host="host-a")
    assert found[("host-a", "0000:af:00.0")]["status"] == "unavailable"
    assert found[("host-a", "0000:3b:00.0")]["status"] == "unavailable"
    assert found[("host-a", "0000:3b:00.1")]["status"] == "ready"
    # only an unavailable device may be deleted; the newcomer appears on the next fetch
    assert client.delete("/v1/devices/host-a/0000:3b:00.1", headers=ADMIN).status_code == 409
    assert client.delete("/v1/devices/host-a/0000:3b:00.0", headers=ADMIN).status_code == 204
    poller(app).fetch_now("host-a", background=False)
    assert devices(client, host="host-a")[("host-a", "0000:3b:00.0")]["device_id"] == "2236"


def test_agent_event_with_its_own_token_triggers_a_fetch(world):
    app, client, agents = world
    from tests.conftest import AUTH
    event = {"host_id": "host-a", "boot_id": "x", "generation": 9, "reason": "usb 1-1.1"}
    wrong = client.post("/v1/hosts/host-a/events", headers={"Authorization": "Bearer nope"},
                        json=event)
    assert wrong.status_code == 401
    assert client.post("/v1/hosts/host-b/events", headers=AUTH,
                       json={**event, "host_id": "host-b"}).status_code in (202, 403)
    event["generation"] = client.get("/v1/hosts/host-a", headers=ADMIN).get_json()[
        "generation"] + 1                 # news to the controller
    before = _agent_calls(agents["host-a"])["devices.devices"]
    answer = client.post("/v1/hosts/host-a/events", headers=AUTH, json=event)
    assert answer.status_code == 202
    assert wait_for(lambda: _agent_calls(agents["host-a"])["devices.devices"] > before)


def test_event_from_the_known_agent_start_skips_health_and_a_repeat_asks_nothing(world):
    app, client, agents = world
    from tests.conftest import AUTH
    host = client.get("/v1/hosts/host-a", headers=ADMIN).get_json()
    event = {"host_id": "host-a", "boot_id": host["boot_id"],
             "generation": host["generation"] + 1, "reason": "usb 1-1.1"}
    before = _agent_calls(agents["host-a"])
    assert poller(app).fetch_now("host-a", background=False, event=event) == "changed"
    asked = _agent_calls(agents["host-a"]) - before
    assert asked == {"devices.devices": 1}, asked     # no health check first
    # another worker's copy of a change already fetched: no request at all
    before = _agent_calls(agents["host-a"])
    again = client.post("/v1/hosts/host-a/events", headers=AUTH,
                        json={**event, "generation": host["generation"]})
    assert again.status_code == 202 and again.get_json()["fetch"] == "current"
    assert _agent_calls(agents["host-a"]) == before
    # a boot id the controller has not seen: health first, then the full resync
    stranger = {**event, "boot_id": "f" * 32}
    poller(app).fetch_now("host-a", background=False, event=stranger)
    asked = _agent_calls(agents["host-a"]) - before
    assert asked["health.health"] == 1 and asked["devices.devices"] == 1, asked


def _agent_calls(agent):
    """Requests the agent served, by endpoint, from its own API latency metric."""
    from collections import Counter
    calls = Counter()
    for family in agent.app.extensions["metrics_registry"].collect():
        for sample in family.samples:
            if sample.name == "hostplane_agent_api_request_seconds_count":
                calls[sample.labels["endpoint"]] += int(sample.value)
    return calls


def test_maintenance_and_iommu_switch_are_admin_patches(world):
    _, client, _ = world
    answer = client.patch("/v1/hosts/host-a", headers=ADMIN,
                          json={"state": "maintenance", "iommu_enabled": False})
    assert answer.status_code == 200
    host = answer.get_json()
    assert (host["state"], host["iommu_enabled"]) == ("maintenance", False)
    assert client.patch("/v1/hosts/host-a", headers=TENANT,
                        json={"state": "enabled"}).status_code == 403


@pytest.mark.parametrize("method, path, body, status", [
    ("get", "/v1/hosts/nope", None, 404),
    ("patch", "/v1/hosts/nope", {"state": "enabled"}, 404),
    ("patch", "/v1/hosts/host-a", {"state": "asleep"}, 400),
    ("patch", "/v1/devices/host-a/0000:99:00.0", {"shared": True}, 404),
    ("post", "/v1/hosts", {"url": "ftp://x", "token": "t"}, 400),
    ("post", "/v1/hosts", {"url": "http://127.0.0.1:9", "token": "t"}, 503),
    ("get", "/v1/devices?colour=red", None, 400),
])
def test_bad_input_gets_a_clear_error_and_changes_nothing(world, method, path, body, status):
    _, client, _ = world
    before = client.get("/v1/hosts", headers=ADMIN).get_json()
    answer = getattr(client, method)(path, headers=ADMIN, json=body)
    assert answer.status_code == status
    assert answer.get_json()["error"]["code"]
    assert client.get("/v1/hosts", headers=ADMIN).get_json() == before


def test_every_endpoint_but_health_and_metrics_needs_a_token(world):
    _, client, _ = world
    assert client.get("/v1/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    for path in ("/v1/hosts", "/v1/devices", "/v1/vms", "/v1/openapi.json"):
        answer = client.get(path)
        assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "unauthorized"


def test_openapi_describes_every_controller_endpoint(world):
    _, client, _ = world
    paths = client.get("/v1/openapi.json", headers=ADMIN).get_json()["paths"]
    for path in ("/v1/hosts", "/v1/hosts/{host_id}", "/v1/hosts/{host_id}/events",
                 "/v1/devices", "/v1/devices/{host_id}/{device_id}", "/v1/vms",
                 "/v1/vms/{name}/devices", "/v1/schedule/explain"):
        assert path in paths, path


def test_a_hosts_numa_nodes_are_kept_from_its_agent(tmp_path):
    """The agent's two NUMA nodes (read from its sysfs) reach the host record at
    registration; devices keep their own node beside them."""
    from tests.demo_host import HOST_ID, demo_host
    from tests.test_controller_support import LoopbackAgent, controller_app, \
        controller_config, register
    agent = LoopbackAgent(tmp_path, HOST_ID, demo_host())
    app = controller_app(controller_config(tmp_path))
    try:
        client = app.test_client()
        register(client, agent)
        host = client.get(f"/v1/hosts/{HOST_ID}", headers=ADMIN).get_json()
        assert host["numa_nodes"] == [{"id": 0, "cpus": "0-15", "memory_mib": 131072},
                                      {"id": 1, "cpus": "16-31", "memory_mib": 131072}]
        found = devices(client, host=HOST_ID)
        assert found[(HOST_ID, "0000:3b:00.0")]["numa_node"] == 0
        assert found[(HOST_ID, "0000:af:00.0")]["numa_node"] == 1
    finally:
        agent.stop()
        app.extensions["hostplane_controller"].close()
