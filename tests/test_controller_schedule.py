"""Placement through the controller: explain, 422 with per-host reasons, USB and tenant rules.

Two real agents on loopback: host-a has two T4-class GPUs (10de:1eb8) and USB stick
serial 4C530001, host-b two A10-class GPUs (10de:2236) and stick 4C530002.
"""

import pytest

from tests.test_controller_support import ADMIN, TENANT, two_host_world

STICK_A, STICK_B = "0781:5567:4C530001", "0781:5567:4C530002"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with two_host_world(tmp_path_factory.mktemp("schedule")) as parts:
        yield parts


def explain(client, headers=ADMIN, **body):
    answer = client.post("/v1/schedule/explain", headers=headers,
                         json={"name": "vm-1", "vcpus": 2, "memory_mib": 1024, **body})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def test_gpu_model_present_only_on_host_b_is_placed_on_b_with_its_audio_function(world):
    _, client, _ = world
    result = explain(client, gpus=[{"vendor_id": "10de", "device_id": "2236"}])
    assert result["chosen"] == "host-b"
    assert [c["host"] for c in result["candidates"]] == ["host-b"]
    claimed = {d["id"] for d in result["candidates"][0]["devices"]}
    assert len(claimed) == 2 and {i[-1] for i in claimed} == {"0", "1"}   # GPU + its .1 audio
    assert any("10de:2236" in reason for reason in result["rejected"]["host-a"])


def test_more_gpus_than_any_host_has_is_422_with_reasons_per_host(world):
    _, client, _ = world
    answer = client.post("/v1/vms", headers=ADMIN, json={
        "name": "greedy", "vcpus": 2, "memory_mib": 1024,
        "gpus": [{"vendor_id": "10de", "device_id": "1eb8", "count": 3}]})
    assert answer.status_code == 422
    error = answer.get_json()["error"]
    assert set(error["details"]["hosts"]) == {"host-a", "host-b"}
    assert any("2 of 3" in r for r in error["details"]["hosts"]["host-a"])
    assert [r["message"] for r in error["details"]["reasons"]["host-a"]] == \
        error["details"]["hosts"]["host-a"]
    assert {r["code"] for r in error["details"]["reasons"]["host-a"]} == {"not_enough_gpus"}
    assert client.get("/v1/vms/greedy", headers=ADMIN).status_code == 404
    assert {d["status"] for d in client.get("/v1/devices?type=gpu", headers=ADMIN)
            .get_json()["devices"]} == {"ready"}


def test_locality_asks_show_what_each_host_offers_and_required_ones_refuse(world):
    """host-a's two T4s sit on two NUMA nodes, each right under its own root port."""
    _, client, _ = world
    two = [{"vendor_id": "10de", "device_id": "1eb8", "count": 2}]
    found = "2 GPUs 10de:1eb8 free: 2 under no switch; NUMA node 0: 1, NUMA node 1: 1"
    preferred = explain(client, gpus=two, locality="same-switch")
    assert preferred["chosen"] == "host-a"
    assert preferred["candidates"][0]["found"] == found
    required = explain(client, gpus=two, locality="same-numa", locality_mode="required")
    assert required["chosen"] is None
    assert required["rejected"]["host-a"] == [f"no 2 free GPUs on one NUMA node ({found})"]
    one = explain(client, gpus=[{"vendor_id": "10de", "device_id": "1eb8"}], numa="required")
    assert one["rejected"]["host-a"] == ["host NUMA nodes not reported"]


def test_memory_shortfall_is_named_with_free_and_asked(world):
    _, client, _ = world
    result = explain(client, memory_mib=600000)
    assert result["chosen"] is None
    assert "not enough memory: 524288 MiB free, 600000 asked" in result["rejected"]["host-a"]


def test_usb_device_pulls_the_vm_to_the_host_that_has_it(world):
    _, client, _ = world
    result = explain(client, usb=[{"id": STICK_B}])
    assert result["chosen"] == "host-b"
    assert any(STICK_B in r and "host-b" in r for r in result["rejected"]["host-a"])


def test_usb_and_gpu_must_share_one_host(world):
    _, client, _ = world
    result = explain(client, usb=[{"id": STICK_A}],
                     gpus=[{"vendor_id": "10de", "device_id": "2236"}])
    assert result["chosen"] is None
    assert result["rejected"]["host-a"] and result["rejected"]["host-b"]


def test_usb_is_admin_only_for_tenants(world):
    _, client, _ = world
    answer = client.post("/v1/vms", headers=TENANT, json={
        "name": "t-usb", "vcpus": 1, "memory_mib": 256, "usb": [{"id": STICK_A}]})
    assert answer.status_code == 403 and answer.get_json()["error"]["code"] == "admin_only"


def test_a_tenant_learns_nothing_of_usb_ids_whether_they_exist_or_not(world):
    _, client, _ = world
    answers = [client.post("/v1/schedule/explain", headers=TENANT, json={
        "name": "t-usb", "vcpus": 1, "memory_mib": 256, "usb": [{"id": usb_id}]})
        for usb_id in (STICK_A, "0781:5567:NOSUCHSTICK")]
    assert [a.status_code for a in answers] == [403, 403]
    assert answers[0].get_json() == answers[1].get_json()


def test_tenant_gets_only_shared_gpus(world):
    _, client, _ = world
    ask = {"gpus": [{"vendor_id": "10de", "device_id": "1eb8"}]}
    assert explain(client, TENANT, **ask)["chosen"] is None
    client.patch("/v1/devices/host-a/0000:af:00.0", headers=ADMIN, json={"shared": True})
    client.patch("/v1/devices/host-a/0000:af:00.1", headers=ADMIN, json={"shared": True})
    try:
        result = explain(client, TENANT, **ask)
        assert result["chosen"] == "host-a"
        assert {d["id"] for d in result["candidates"][0]["devices"]} == {
            "0000:af:00.0", "0000:af:00.1"}
    finally:
        for address in ("0000:af:00.0", "0000:af:00.1"):
            client.patch(f"/v1/devices/host-a/{address}", headers=ADMIN, json={"shared": False})


def test_maintenance_disabled_and_iommu_off_hosts_take_no_new_gpus(world):
    _, client, _ = world
    ask = {"gpus": [{"vendor_id": "10de", "device_id": "2236"}]}
    for patch, reason in (({"state": "maintenance"}, "in maintenance"),
                          ({"state": "disabled"}, "disabled"),
                          ({"iommu_enabled": False}, "host IOMMU switched off")):
        client.patch("/v1/hosts/host-b", headers=ADMIN, json=patch)
        try:
            result = explain(client, **ask)
            assert result["chosen"] is None
            assert reason in result["rejected"]["host-b"]
        finally:
            client.patch("/v1/hosts/host-b", headers=ADMIN,
                         json={"state": "enabled", "iommu_enabled": True})
    assert explain(client, **ask)["chosen"] == "host-b"


def test_unplaceable_when_agent_gone_is_503_and_releases_the_claim(world, tmp_path):
    app, client, agents = world
    port = agents["host-b"].served.port
    agents["host-b"].stop()
    try:
        answer = client.post("/v1/vms", headers=ADMIN, json={
            "name": "vm-lost", "vcpus": 2, "memory_mib": 1024,
            "gpus": [{"vendor_id": "10de", "device_id": "2236"}]})
        assert answer.status_code == 503
        assert answer.get_json()["error"]["code"] == "agent_unreachable"
    finally:
        agents["host-b"].start(port)
    assert client.get("/v1/vms/vm-lost", headers=ADMIN).status_code == 404
    gpus = client.get("/v1/devices?host=host-b", headers=ADMIN).get_json()["devices"]
    assert {d["status"] for d in gpus if d["assignable"]} == {"ready"}
    assert {d["status"] for d in gpus if not d["assignable"]} == {"not_assignable"}
    assert {d["vm"] for d in gpus} == {None}


@pytest.mark.parametrize("body, field", [
    ({"vcpus": 1, "memory_mib": 256}, "name"),
    ({"name": "x y", "vcpus": 1, "memory_mib": 256}, "name"),
    ({"name": "ok", "vcpus": 1, "memory_mib": -5}, "memory_mib"),
    ({"name": "ok", "vcpus": 0, "memory_mib": 256}, "vcpus"),
    ({"name": "ok", "vcpus": 1, "memory_mib": 256,
      "gpus": [{"vendor_id": "10de", "device_id": "1eb8", "count": 0}]}, "gpus.0.count"),
    ({"name": "ok", "vcpus": 1, "memory_mib": 256, "gpus": [{"id": "3b:00"}]}, "gpus.0.id"),
    ({"name": "ok", "vcpus": 1, "memory_mib": 256, "usb": [{"id": "sandisk"}]}, "usb.0.id"),
    ({"name": "ok", "vcpus": 1, "memory_mib": 256, "strategy": "random"}, "strategy"),
    ({"name": "ok", "vcpus": 1, "memory_mib": 256, "numa": "strict"}, "numa"),
    ({"name": "ok", "vcpus": 1, "memory_mib": 256, "locality": "same-rack"}, "locality"),
    ({"name": "ok", "vcpus": 1, "memory_mib": 256, "locality_mode": "maybe"}, "locality_mode"),
])
def test_bad_vm_bodies_are_400_naming_the_field(world, body, field):
    _, client, _ = world
    for path in ("/v1/vms", "/v1/schedule/explain"):
        answer = client.post(path, headers=ADMIN, json=body)
        assert answer.status_code == 400, answer.get_json()
        fields = [e["field"] for e in answer.get_json()["error"]["details"]["errors"]]
        assert field in fields


def test_invalid_json_is_400(world):
    _, client, _ = world
    answer = client.post("/v1/vms", headers={**ADMIN, "Content-Type": "application/json"},
                         data="{not json")
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "invalid_json"


def test_a_json_body_is_taken_whatever_its_content_type(world):
    """curl -d sends application/x-www-form-urlencoded: the body is still a JSON object."""
    _, client, _ = world
    body = '{"name": "vm1", "vcpus": 1, "memory_mib": 512}'
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {**ADMIN, **({"Content-Type": content_type} if content_type else {})}
        answer = client.post("/v1/schedule/explain", headers=headers, data=body)
        assert answer.status_code == 200, (content_type, answer.get_json())
        assert answer.get_json()["chosen"] in ("host-a", "host-b")
    answer = client.post("/v1/networks", headers={**ADMIN, "Content-Type": "text/plain"},
                         data='{"name": "pool-a", "type": "vxlan-pool", "vni_range": [100, 200],'
                         ' "local_cidr": "10.0.0.0/8"}')
    assert answer.status_code == 201, answer.get_json()


def test_unknown_vm_is_404(world):
    _, client, _ = world
    for method, path in (("get", "/v1/vms/nope"), ("delete", "/v1/vms/nope"),
                         ("post", "/v1/vms/nope/start"),
                         ("delete", "/v1/vms/nope/devices/host-a/0000:3b:00.0")):
        answer = getattr(client, method)(path, headers=ADMIN)
        assert answer.status_code == 404, (path, answer.get_json())


@pytest.mark.parametrize("method, path, code", [
    ("get", "/v1/hosts/bad%20host", "invalid_id"),
    ("patch", "/v1/hosts/-leading-dash", "invalid_id"),
    ("delete", "/v1/hosts/" + "h" * 129, "invalid_id"),
    ("get", "/v1/devices/host-a/not-a-device", "invalid_id"),
    ("patch", "/v1/devices/host-a/0000:3b:00.9", "invalid_id"),
    ("delete", "/v1/devices/bad%20host/0000:3b:00.0", "invalid_id"),
    ("get", "/v1/vms/bad%20name", "invalid_name"),
    ("delete", "/v1/vms/" + "v" * 64, "invalid_name"),
    ("post", "/v1/vms/.hidden/start", "invalid_name"),
    ("delete", "/v1/vms/vm-1/devices/host-a/zz:zz", "invalid_id"),
    ("get", "/v1/networks/bad%20net", "invalid_name"),
])
def test_malformed_path_ids_are_400_not_404(world, method, path, code):
    _, client, _ = world
    before = client.get("/v1/devices", headers=ADMIN).get_json()
    answer = getattr(client, method)(path, headers=ADMIN, json={"state": "disabled"})
    assert answer.status_code == 400, (path, answer.get_json())
    assert answer.get_json()["error"]["code"] == code
    assert client.get("/v1/devices", headers=ADMIN).get_json() == before
    assert client.get("/v1/hosts/host-a", headers=ADMIN).get_json()["state"] == "enabled"


def test_well_formed_ids_are_normalised_or_404(world):
    _, client, _ = world
    short = client.get("/v1/devices/host-b/3b:00.0", headers=ADMIN)
    assert short.status_code == 200 and short.get_json()["id"] == "0000:3b:00.0"
    upper = client.get("/v1/devices/host-a/0781:5567:4C530001", headers=ADMIN)
    assert upper.status_code == 200
    assert client.get("/v1/devices/host-a/0000:99:00.0", headers=ADMIN).status_code == 404
    assert client.get("/v1/hosts/host-z", headers=ADMIN).status_code == 404


def scheduler_counts(client):
    """{(family, labels as a sorted tuple): value} of the scheduler's counters."""
    from prometheus_client.parser import text_string_to_metric_families
    text = client.get("/metrics").get_data(as_text=True)
    return {(f.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) if "scheduler" in f.name
            for s in f.samples if s.name.endswith("_total")}


def test_scheduler_decisions_and_refusal_kinds_are_counted(world):
    _, client, _ = world
    before = scheduler_counts(client)
    explain(client, gpus=[{"vendor_id": "10de", "device_id": "1eb8", "count": 9}])
    explain(client)
    after = scheduler_counts(client)
    decisions = "hostplane_controller_scheduler_decisions"
    refusals = "hostplane_controller_scheduler_refusals"

    def grew(family, **labels):
        key = (family, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew(decisions, operation="explain", outcome="refused") == 1
    assert grew(decisions, operation="explain", outcome="placed") == 1
    assert grew(refusals, reason="not_enough_gpus") == 1   # host-a has 2 of 9
    assert grew(refusals, reason="no_gpu_model") == 1      # host-b has none
    assert grew(refusals, reason="not_enough_memory") == 0


def test_a_gpu_held_by_a_vm_named_like_usb_is_counted_by_its_code(world):
    _, client, _ = world
    made = client.post("/v1/vms", headers=ADMIN, json={
        "name": "USB-kiosk", "host": "host-a", "vcpus": 1, "memory_mib": 64, "start": False,
        "gpus": [{"id": "0000:3b:00.0"}]})
    assert made.status_code == 201, made.get_json()
    try:
        before = scheduler_counts(client)
        result = explain(client, host="host-a", gpus=[{"id": "0000:3b:00.0"}])
        after = scheduler_counts(client)
        assert result["reasons"]["host-a"] == [
            {"code": "device_attached", "message": "GPU 0000:3b:00.0 attached to USB-kiosk"}]
        grown = {dict(labels)["reason"] for (family, labels), value in after.items()
                 if family == "hostplane_controller_scheduler_refusals"
                 and value > before.get((family, labels), 0)}
        assert grown == {"device_attached", "not_requested_host"}
    finally:
        assert client.delete("/v1/vms/USB-kiosk", headers=ADMIN).status_code == 204


def test_a_request_without_strategy_ranks_by_the_configured_one(tmp_path):
    """host-a busy in CPU, host-b in memory: least-memory (configured) picks host-a."""
    from tests.test_controller_support import (LoopbackAgent, controller_app,
                                               controller_config, gpu_host, register)
    agents = [LoopbackAgent(tmp_path, host_id, gpu_host()) for host_id in ("host-a", "host-b")]
    app = controller_app(controller_config(tmp_path, scheduler={"strategy": "least-memory"}))
    client = app.test_client()
    try:
        for agent in agents:
            register(client, agent)
        for name, host, vcpus, memory in (("cpu-heavy", "host-a", 16, 64),
                                          ("memory-heavy", "host-b", 1, 200000)):
            made = client.post("/v1/vms", headers=ADMIN, json={
                "name": name, "host": host, "vcpus": vcpus, "memory_mib": memory,
                "start": False})
            assert made.status_code == 201, made.get_json()
        assert explain(client)["chosen"] == "host-a"
        assert explain(client, strategy="least-cpu")["chosen"] == "host-b"
        made = client.post("/v1/vms", headers=ADMIN, json={
            "name": "unnamed-strategy", "vcpus": 1, "memory_mib": 64, "start": False})
        assert made.status_code == 201 and made.get_json()["host"] == "host-a"
    finally:
        for agent in agents:
            agent.stop()
        app.extensions["hostplane_controller"].close()


def test_equal_hosts_in_id_order_with_tie_break_host_id_and_a_bad_value_refused(tmp_path):
    """`[scheduler] tie_break = "host-id"` ranks equal hosts by id (the default, "spread",
    in an order of each controller process's own: tests/test_scheduler_indexed.py); a
    value it does not know stops the controller with what it takes."""
    from controller.services import Controller
    from hostplane.config import ConfigError
    from tests.test_controller_support import (LoopbackAgent, controller_app,
                                               controller_config, gpu_host, register)
    with pytest.raises(ConfigError, match="tie_break must be one of spread, host-id"):
        Controller(controller_config(tmp_path, scheduler={"tie_break": "random"}))
    names = [f"host-{n}" for n in "dcba"]
    agents = [LoopbackAgent(tmp_path, host_id, gpu_host()) for host_id in names]
    app = controller_app(controller_config(tmp_path, scheduler={"tie_break": "host-id"}))
    client = app.test_client()
    try:
        for agent in agents:
            register(client, agent)
        ranked = explain(client)["candidates"]
        assert [entry["host"] for entry in ranked] == sorted(names)
    finally:
        for agent in agents:
            agent.stop()
        app.extensions["hostplane_controller"].close()
        Controller(controller_config(tmp_path))   # this process back to the default


def test_a_vm_operations_agent_wait_is_its_own_setting(tmp_path):
    """`[agents] operation_timeout_s` is how long a create, start or unplug waits for its
    agent (and so when a silent create is asked about again); 0 keeps six poll timeouts;
    anything but a number of seconds stops the controller."""
    from controller.services import Controller
    from hostplane.config import ConfigError
    from tests.test_controller_support import controller_config
    for agents, expected in (({}, 12.0), ({"operation_timeout_s": 90}, 90.0)):
        controller = Controller(controller_config(tmp_path, agents=agents))   # poll: 2 s
        try:
            assert controller.agent_call_s() == expected
            assert controller.poller.create_grace_s == expected + 10
        finally:
            controller.close()
    for bad in (-1, "soon", True, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"\[agents\] operation_timeout_s must be"):
            Controller(controller_config(tmp_path, agents={"operation_timeout_s": bad}))
