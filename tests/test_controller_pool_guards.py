"""Shares and quotas hold whatever way a tenant asks, and a pool keeps the devices its
VMs hold (real agents on loopback, controller on SQLite).

Found by probing the API as a hostile tenant: a pool ask takes its device's whole IOMMU
group, and a sibling from another pool was neither checked against that pool's share nor
charged to its quota; a PATCH could drop held devices out of a pool (and so out of every
quota) where a DELETE is refused. host-a: two T4 GPUs 10de:1eb8, each with its audio
function 10de:10f8 in its IOMMU group (tests/hosts.py small_gpu_host).
"""

from tests.test_controller_pools import create, devices_of, error, make_pool
from tests.test_controller_support import ADMIN, TENANT
from tests.test_controller_vms import world  # noqa: F401 - fixture: two hosts, VMs cleaned

T4 = {"vendor_id": "10de", "device_id": "1eb8"}
T4_AUDIO = {"vendor_id": "10de", "device_id": "10f8"}


def share(client, pool, max_count):
    answer = client.put(f"/v1/device-pools/{pool}/shares/acme", headers=ADMIN,
                        json={"max_count": max_count})
    assert answer.status_code == 200, answer.get_json()


def held_by(client, vm):
    return sorted(d_id for d_id, d in devices_of(client, "host-a").items() if d["vm"] == vm)


def test_a_sibling_from_a_pool_not_shared_is_refused_and_one_shared_is_charged(world):
    client = world
    assert make_pool(client, "t4", **T4).status_code == 201
    assert make_pool(client, "t4audio", **T4_AUDIO).status_code == 201
    share(client, "t4audio", 2)
    refused = create(client, "acme-1", TENANT, host="host-a", devices=[{"pool": "t4audio"}])
    assert refused.status_code == 403, refused.get_json()
    assert (error(refused)["code"], error(refused)["details"]) == (
        "pool_not_shared", {"pool": "t4"})
    assert client.get("/v1/vms/acme-1", headers=TENANT).status_code == 404
    assert held_by(client, "acme-1") == []

    share(client, "t4", 1)
    made = create(client, "acme-1", TENANT, host="host-a", devices=[{"pool": "t4audio"}])
    assert made.status_code == 201, made.get_json()
    assert len(held_by(client, "acme-1")) == 2   # the audio function and its GPU
    used = {p["name"]: p["quota"]["used"] for p in
            client.get("/v1/device-pools", headers=TENANT).get_json()["pools"]}
    assert used == {"t4": 1, "t4audio": 1}
    # the second GPU would pass t4audio's quota (2) but not t4's (1)
    over = create(client, "acme-2", TENANT, host="host-a", devices=[{"pool": "t4audio"}])
    assert over.status_code == 403 and error(over)["code"] == "quota_exceeded"
    assert error(over)["details"] == {"pool": "t4", "used": 1, "asked": 1, "limit": 1}
    assert held_by(client, "acme-2") == []


def test_a_patch_that_would_drop_held_devices_is_refused_like_a_delete(world):
    client = world
    assert make_pool(client, "t4", **T4).status_code == 201
    assert create(client, "holder", devices=[{"pool": "t4"}]).status_code == 201
    refused = client.patch("/v1/device-pools/t4", headers=ADMIN, json={"device_id": "0bad"})
    assert refused.status_code == 409 and error(refused)["code"] == "pool_in_use"
    assert error(refused)["details"]["vms"] == ["holder"]
    assert "holder" in error(refused)["message"]
    pool = client.get("/v1/device-pools/t4", headers=ADMIN).get_json()
    assert (pool["device_id"], pool["size"], pool["attached"]) == ("1eb8", 2, 1)
    # narrowing that keeps what is held is fine
    kept = client.patch("/v1/device-pools/t4", headers=ADMIN, json={"type": "gpu"})
    assert kept.status_code == 200 and kept.get_json()["attached"] == 1
    assert client.delete("/v1/vms/holder", headers=ADMIN).status_code == 204
    assert client.patch("/v1/device-pools/t4", headers=ADMIN,
                        json={"device_id": "0bad"}).status_code == 200
