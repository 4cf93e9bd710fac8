"""A controller process reuses the pools it found for a moment (a create then costs no
read of its own for them); what another process changed meanwhile is never acted on.

Two controllers on one database (two apps, each with its own memory, on the SQLite file
of real agents on loopback): one creates from a pool, the other changes, deletes or
unshares it, and the first one's next create must answer as if it had read the pool
afresh — placed on the pool as it is now, or 404 — never a 409 for what it could not see,
and never a device of the pool as it was.
"""

from tests.test_controller_pools import create, devices_of, error, make_pool
from tests.test_controller_support import (ADMIN, TENANT, controller_app, controller_config,
                                           two_host_world)

T4 = {"vendor_id": "10de", "device_id": "1eb8"}     # host-a's GPUs
A10 = {"vendor_id": "10de", "device_id": "2236"}    # host-b's GPUs


def held(client, host_id, vm):
    return sorted(d_id for d_id, d in devices_of(client, host_id).items() if d["vm"] == vm)


def test_a_pool_changed_or_deleted_by_another_controller_is_read_again(tmp_path):
    with two_host_world(tmp_path) as (app, first, _agents):
        other_app = controller_app(controller_config(tmp_path))   # the same database
        other = other_app.test_client()
        try:
            assert make_pool(first, "gpus", **T4).status_code == 201
            made = create(first, "vm-1", devices=[{"pool": "gpus"}])
            assert made.status_code == 201 and made.get_json()["host"] == "host-a"
            assert first.delete("/v1/vms/vm-1", headers=ADMIN).status_code == 204

            # the other controller points the pool at host-b's model
            assert other.patch("/v1/device-pools/gpus", headers=ADMIN,
                               json=A10).status_code == 200
            moved = create(first, "vm-2", devices=[{"pool": "gpus"}])
            assert moved.status_code == 201, moved.get_json()
            assert moved.get_json()["host"] == "host-b"
            assert held(first, "host-a", "vm-2") == [] and len(held(first, "host-b", "vm-2")) == 2
            assert first.delete("/v1/vms/vm-2", headers=ADMIN).status_code == 204

            # ... and deletes it
            assert other.delete("/v1/device-pools/gpus", headers=ADMIN).status_code in (200, 204)
            gone = create(first, "vm-3", devices=[{"pool": "gpus"}])
            assert gone.status_code == 404 and error(gone)["code"] == "pool_not_found"
            assert first.get("/v1/vms/vm-3", headers=ADMIN).status_code == 404
        finally:
            other_app.extensions["hostplane_controller"].close()


def test_a_pool_unshared_by_another_controller_is_refused_to_the_tenant(tmp_path):
    with two_host_world(tmp_path) as (app, first, _agents):
        other_app = controller_app(controller_config(tmp_path))
        other = other_app.test_client()
        try:
            assert make_pool(first, "t4", **T4).status_code == 201
            assert first.put("/v1/device-pools/t4/shares/acme", headers=ADMIN,
                             json={"max_count": 2}).status_code == 200
            made = create(first, "acme-1", TENANT, devices=[{"pool": "t4"}])
            assert made.status_code == 201, made.get_json()

            assert other.delete("/v1/device-pools/t4/shares/acme",
                                headers=ADMIN).status_code in (200, 204)
            refused = create(first, "acme-2", TENANT, devices=[{"pool": "t4"}])
            assert refused.status_code == 404 and error(refused)["code"] == "pool_not_found"
            assert held(first, "host-a", "acme-2") == []
            # shared again: found at once, though this process was refused a moment ago
            assert other.put("/v1/device-pools/t4/shares/acme", headers=ADMIN,
                             json={"max_count": 2}).status_code == 200
            again = create(first, "acme-2", TENANT, devices=[{"pool": "t4"}])
            assert again.status_code == 201, again.get_json()
        finally:
            other_app.extensions["hostplane_controller"].close()
