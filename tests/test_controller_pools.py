"""Device pools through the controller's API, with real agents on loopback.

host-a: two T4 GPUs (10de:1eb8, each with its audio function in its IOMMU group), an
SR-IOV NIC 8086:1593 with two VFs 8086:1889, a Samsung NVMe 144d:a808; host-b the same
with A10 GPUs (10de:2236) (tests/hosts.py small_gpu_host).
"""

import pytest

from tests.test_controller_support import ADMIN, TENANT, two_host_world
from tests.test_controller_vms import world  # noqa: F401 - fixture: two hosts, VMs cleaned

T4 = {"vendor_id": "10de", "device_id": "1eb8"}
VF = {"vendor_id": "8086", "device_id": "1889", "vf_of": "8086:1593"}
NVME = {"vendor_id": "144d", "device_id": "a808"}


def make_pool(client, name, **match):
    return client.post("/v1/device-pools", headers=ADMIN, json={"name": name, **match})


def create(client, name, headers=ADMIN, **body):
    return client.post("/v1/vms", headers=headers, json={
        "name": name, "vcpus": 1, "memory_mib": 128, "start": False, **body})


def devices_of(client, host_id, headers=ADMIN):
    answer = client.get(f"/v1/devices?host={host_id}", headers=headers).get_json()
    return {d["id"]: d for d in answer["devices"]}


def error(answer):
    return answer.get_json()["error"]


def test_pool_crud_counts_its_devices_per_host(world):
    client = world
    answer = make_pool(client, "t4", **T4)
    assert answer.status_code == 201, answer.get_json()
    pool = answer.get_json()
    assert (pool["size"], pool["free"], pool["attached"], pool["unavailable"]) == (2, 2, 0, 0)
    assert pool["hosts"] == {"host-a": {"size": 2, "free": 2, "attached": 0, "unavailable": 0}}
    assert "warning" not in pool and pool["shares"] == []
    assert [p["name"] for p in client.get("/v1/device-pools", headers=ADMIN)
            .get_json()["pools"]] == ["t4"]
    assert make_pool(client, "t4", **NVME).status_code == 409
    patched = client.patch("/v1/device-pools/t4", headers=ADMIN, json={"type": "gpu"})
    assert patched.status_code == 200 and patched.get_json()["type"] == "gpu"
    assert patched.get_json()["size"] == 2
    # the NVMe's own pool: every device shows the pool it is in
    assert make_pool(client, "nvme", **NVME).status_code == 201
    devices = devices_of(client, "host-a")
    assert devices["0000:3b:00.0"]["pool"] == "t4" and devices["0000:3b:00.1"]["pool"] is None
    assert devices["0000:5e:00.0"]["pool"] == "nvme"
    listed = client.get("/v1/devices?pool=t4", headers=ADMIN).get_json()["devices"]
    assert [(d["host_id"], d["id"]) for d in listed] == [("host-a", "0000:3b:00.0"),
                                                         ("host-a", "0000:af:00.0")]
    clash = client.patch("/v1/device-pools/nvme", headers=ADMIN, json=T4)
    assert clash.status_code == 409 and error(clash)["code"] == "pool_overlap"
    assert client.get("/v1/device-pools/nvme", headers=ADMIN).get_json()["vendor_id"] == "144d"
    assert client.patch("/v1/device-pools/nope", headers=ADMIN, json=T4).status_code == 404
    assert client.patch("/v1/device-pools/nvme", headers=ADMIN,
                        json={"vendor_id": None}).status_code == 400
    assert client.delete("/v1/device-pools/t4", headers=ADMIN).status_code == 204
    assert client.get("/v1/device-pools/t4", headers=ADMIN).status_code == 404
    assert devices_of(client, "host-a")["0000:3b:00.0"]["pool"] is None


def test_match_naming_nothing_is_created_with_size_0_and_a_warning(world):
    answer = make_pool(world, "future", vendor_id="10DE", device_id="2901")
    assert answer.status_code == 201
    pool = answer.get_json()
    assert pool["size"] == 0 and pool["hosts"] == {} and "no known device" in pool["warning"]
    assert pool["vendor_id"] == "10de"   # stored as the inventory says ids
    read = world.get("/v1/device-pools/future", headers=ADMIN).get_json()
    assert read == pool   # the warning on every read; one timestamp form on SQLite too
    assert read["created_at"].endswith("+00:00")


@pytest.mark.parametrize("body", [{"count": "1"}, {"count": True}, {"count": 1.0}])
def test_a_count_must_be_a_json_integer(world, body):
    make_pool(world, "t4", **T4)
    answer = create(world, "v1", devices=[{"pool": "t4", **body}])
    assert answer.status_code == 400 and error(answer)["code"] == "invalid_request"
    shared = world.put("/v1/device-pools/t4/shares/acme", headers=ADMIN,
                       json={"max_count": body["count"]})
    assert shared.status_code == 400


@pytest.mark.parametrize("query", ["pool=bad%20x", "type=banana", "status=free", "kind=pcie",
                                   "host=-x", "cluster=a%2Fb"])
def test_a_device_filter_that_can_never_match_is_400(world, query):
    answer = world.get(f"/v1/devices?{query}", headers=ADMIN)
    assert answer.status_code == 400 and error(answer)["code"] == "invalid_filter", query


def test_overlapping_match_is_refused_naming_the_devices_it_would_share(world):
    client = world
    assert make_pool(client, "vfs", **VF).status_code == 201
    answer = make_pool(client, "intel-vf", vendor_id="8086", device_id="1889")
    assert answer.status_code == 409 and error(answer)["code"] == "pool_overlap"
    assert sorted(error(answer)["details"]["pools"]["vfs"]) == [
        "host-a/0000:18:01.0", "host-a/0000:18:01.1",
        "host-b/0000:18:01.0", "host-b/0000:18:01.1"]
    assert client.get("/v1/device-pools/intel-vf", headers=ADMIN).status_code == 404
    # matches that can never take one device (different subsystem ids) may live side by side
    nvidia = make_pool(client, "t4-nvidia", subsystem_vendor_id="10de", **T4)
    assert nvidia.status_code == 201 and nvidia.get_json()["size"] == 2   # as the agent says
    oem = make_pool(client, "t4-oem", subsystem_vendor_id="1028", **T4)
    assert oem.status_code == 201 and oem.get_json()["size"] == 0
    assert make_pool(client, "t4-all", **T4).status_code == 409


@pytest.mark.parametrize("body, code", [
    ({"vendor_id": "10de"}, "invalid_request"),
    ({"vendor_id": "10de", "device_id": "1eb"}, "invalid_request"),
    ({"vendor_id": "10de", "device_id": "1eb8", "vf_of": "8086"}, "invalid_request"),
    ({"vendor_id": "10de", "device_id": "1eb8", "name": "bad name"}, "invalid_request"),
    ({"vendor_id": "10de", "device_id": "1eb8", "type": "banana"}, "invalid_request"),
    ({"vendor_id": "10de", "device_id": "1eb8", "type": "usb"}, "invalid_request"),
])
def test_bad_pool_bodies_are_400_and_store_nothing(world, body, code):
    answer = world.post("/v1/device-pools", headers=ADMIN, json={"name": "p", **body})
    assert answer.status_code == 400 and error(answer)["code"] == code
    assert world.get("/v1/device-pools", headers=ADMIN).get_json()["pools"] == []


def test_pool_ask_claims_a_gpu_with_its_audio_function_and_vfs_of_the_pf_model(world):
    client = world
    make_pool(client, "t4", **T4)
    make_pool(client, "vfs", **VF)
    answer = create(client, "pooled", devices=[{"pool": "t4", "count": 1},
                                               {"pool": "vfs", "count": 2}])
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["host"] == "host-a"
    held = {d_id for d_id, d in devices_of(client, "host-a").items() if d["vm"] == "pooled"}
    assert held == {"0000:3b:00.0", "0000:3b:00.1", "0000:18:01.0", "0000:18:01.1"}
    pools = {p["name"]: p for p in client.get("/v1/device-pools", headers=ADMIN)
             .get_json()["pools"]}
    assert (pools["t4"]["free"], pools["t4"]["attached"]) == (1, 1)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'hostplane_controller_pool_devices{pool="t4",standing="attached"} 1.0' in metrics
    assert pools["vfs"]["hosts"]["host-a"]["attached"] == 2
    assert pools["vfs"]["hosts"]["host-b"]["free"] == 2
    # deleting a pool a VM holds devices of: 409 naming the VM, nothing deleted
    refused = client.delete("/v1/device-pools/t4", headers=ADMIN)
    assert refused.status_code == 409 and error(refused)["code"] == "pool_in_use"
    assert error(refused)["details"]["vms"] == ["pooled"]
    assert client.get("/v1/device-pools/t4", headers=ADMIN).status_code == 200


def test_pool_ask_errors_404_400_422(world):
    client = world
    make_pool(client, "t4", **T4)
    unknown = create(client, "v1", devices=[{"pool": "a100", "count": 1}])
    assert unknown.status_code == 404 and error(unknown)["code"] == "pool_not_found"
    for count in (0, 65):
        bad = create(client, "v1", devices=[{"pool": "t4", "count": count}])
        assert bad.status_code == 400, count
    too_many = create(client, "v1", devices=[{"pool": "t4", "count": 3}])
    assert too_many.status_code == 422
    reasons = error(too_many)["details"]["hosts"]
    assert "only 2 of 3 devices of pool t4 free" in reasons["host-a"]
    assert "no device of pool t4 on this host" in reasons["host-b"]
    explained = client.post("/v1/schedule/explain", headers=ADMIN, json={
        "name": "v1", "vcpus": 1, "memory_mib": 64, "devices": [{"pool": "t4", "count": 2}]})
    assert explained.get_json()["chosen"] == "host-a"
    assert client.get("/v1/vms", headers=ADMIN).get_json()["vms"] == []


def test_attach_later_takes_a_pool(world):
    client = world
    make_pool(client, "nvme", **NVME)
    assert create(client, "later", host="host-b").status_code == 201
    answer = client.post("/v1/vms/later/devices", headers=ADMIN,
                         json={"devices": [{"pool": "nvme"}]})
    assert answer.status_code == 200, answer.get_json()
    assert devices_of(client, "host-b")["0000:5e:00.0"]["vm"] == "later"
    again = client.post("/v1/vms/later/devices", headers=ADMIN,
                        json={"devices": [{"pool": "nvme"}]})
    assert again.status_code == 409 and "of pool nvme" in error(again)["message"]


def test_tenant_sees_only_shared_pools_and_is_held_to_its_quota(world):
    client = world
    make_pool(client, "vfs", **VF)
    make_pool(client, "t4", **T4)
    assert client.get("/v1/device-pools", headers=TENANT).get_json()["pools"] == []
    hidden = create(client, "acme-1", TENANT, devices=[{"pool": "vfs"}])
    assert hidden.status_code == 404 and error(hidden)["code"] == "pool_not_found"
    assert client.put("/v1/device-pools/vfs/shares/nobody", headers=ADMIN,
                      json={"max_count": 1}).status_code == 404
    assert client.put("/v1/device-pools/vfs/shares/acme", headers=TENANT,
                      json={"max_count": 9}).status_code == 403
    shared = client.put("/v1/device-pools/vfs/shares/acme", headers=ADMIN, json={"max_count": 3})
    assert shared.status_code == 200
    assert shared.get_json() == {"pool": "vfs", "tenant": "acme", "max_count": 3, "used": 0}
    seen = client.get("/v1/device-pools", headers=TENANT).get_json()["pools"]
    assert [p["name"] for p in seen] == ["vfs"] and seen[0]["quota"]["max_count"] == 3
    assert "shares" not in seen[0]
    assert create(client, "acme-1", TENANT, devices=[{"pool": "vfs", "count": 2}]
                  ).status_code == 201
    explained = client.post("/v1/schedule/explain", headers=TENANT, json={
        "name": "acme-2", "vcpus": 1, "memory_mib": 64, "devices": [{"pool": "vfs", "count": 2}]})
    assert explained.get_json()["quotas"] == [{"pool": "vfs", "used": 2, "asked": 2,
                                               "limit": 3, "exceeded": True}]
    assert explained.get_json()["candidates"]   # it would fit, but the create is refused
    over = create(client, "acme-2", TENANT, devices=[{"pool": "vfs", "count": 2}])
    assert over.status_code == 403 and error(over)["code"] == "quota_exceeded"
    assert error(over)["details"] == {"pool": "vfs", "used": 2, "asked": 2, "limit": 3}
    # explain tells the same: no host chosen, and the create's own 403
    assert explained.get_json()["chosen"] is None
    assert explained.get_json()["refused"] == error(over)
    # where nothing fits, the create's answer is 422, and explain refuses nothing more
    nowhere = client.post("/v1/schedule/explain", headers=TENANT, json={
        "name": "acme-9", "vcpus": 1, "memory_mib": 64, "devices": [{"pool": "vfs", "count": 9}]})
    assert nowhere.get_json()["quotas"][0]["exceeded"] and "refused" not in nowhere.get_json()
    assert create(client, "acme-9", TENANT, devices=[{"pool": "vfs", "count": 9}]
                  ).status_code == 422
    assert client.get("/v1/vms/acme-2", headers=TENANT).status_code == 404
    assert create(client, "acme-3", TENANT, devices=[{"pool": "vfs"}]).status_code == 201
    admin_view = client.get("/v1/device-pools/vfs", headers=ADMIN).get_json()
    assert admin_view["shares"] == [{"pool": "vfs", "tenant": "acme", "max_count": 3,
                                     "used": 3}]
    # the tenant reads its devices' pool; unsharing stops new claims, keeps what it holds
    assert client.delete("/v1/device-pools/vfs/shares/acme", headers=ADMIN).status_code == 204
    assert create(client, "acme-4", TENANT, devices=[{"pool": "vfs"}]).status_code == 404
    assert client.get("/v1/vms/acme-3", headers=TENANT).get_json()["devices"]


def test_cli_creates_shares_lists_and_places_by_pool(tmp_path, capsys):
    from controller import opcli, opcli_pools
    from tests.test_controller_support import ADMIN_TOKEN, TENANT_TOKEN, Served
    from tests.test_opcli import columns
    with two_host_world(tmp_path) as (app, client, _):
        served = Served(app)

        def run(*argv, token=ADMIN_TOKEN):
            status = opcli.main(["--url", served.url, "--token", token, *argv])
            return (status, *capsys.readouterr())
        try:
            status, out, _ = run("pool", "create", "vfs", "--match", "8086:1889",
                                 "--vf-of", "8086:1593")
            assert status == 0 and "8086:1889 vf-of 8086:1593" in out
            assert run("pool", "share", "vfs", "acme", "--max-count", "2")[0] == 0
            status, out, _ = run("pools")
            assert columns(out) == [{"NAME": "vfs", "MATCH": "8086:1889 vf-of 8086:1593",
                                     "SIZE": "4", "FREE": "4", "ATTACHED": "0",
                                     "UNAVAILABLE": "0", "HOSTS": "2", "SHARES": "acme:0/2"}]
            status, out, _ = run("schedule", "--explain", "--vcpus", "1", "--memory-mib", "64",
                                 "--pool", "vfs:2")
            assert status == 0 and "would be chosen" in out
            # the tenant, past its quota: it would fit, but the create would be refused
            assert run("pool", "share", "vfs", "acme", "--max-count", "1")[0] == 0
            status, out, _ = run("schedule", "--explain", "--vcpus", "1", "--memory-mib", "64",
                                 "--pool", "vfs:2", token=TENANT_TOKEN)
            assert status == 1 and out.startswith(
                "refused (quota_exceeded): quota of device pool vfs exceeded: 0 of 1 in use, "
                "2 more asked\n"), out
            # a pool name may end in x2: the count has its own separator
            assert opcli_pools.pool_asks(["nvmex2", "a100:4"]) == [
                {"pool": "nvmex2", "count": 1}, {"pool": "a100", "count": 4}]
            status, out, _ = run("schedule", "--explain", "--vcpus", "1", "--memory-mib", "64",
                                 "--pool", "vfs:2", "--locality", "same-numa",
                                 "--locality-mode", "required")
            assert status == 0 and "would be chosen" in out, out
            status, out, _ = run("schedule", "--explain", "--vcpus", "1", "--memory-mib", "64",
                                 "--pool", "vfs:2", "--numa", "required")
            assert status == 1 and "numa_unknown" in out, out   # these trees have no nodes
            status, _, err = run("pool", "create", "bad", "--match", "8086")
            assert status == 2 and "--match" in err
            status, _, err = run("pool", "delete", "nothing")
            assert status == 1 and "pool_not_found" in err
            assert run("pool", "delete", "vfs")[0] == 0
        finally:
            served.stop()
