"""A poll answered before a detach and written after it never takes the device back.

Seen in the lab: an operator detached a GPU (200, the device back on its host driver) and the
controller still called it `attached` — the poller had fetched the agent's inventory while
the VM still held the GPU and wrote it just after the release. Real agents and a real
controller on SQLite; the poll is made stale by detaching between its fetch and its write.
"""

from tests.test_controller_support import ADMIN, poller, stale_polls, two_host_world

GPU = "0000:3b:00.0"


def _device(client, device_id=GPU):
    return client.get(f"/v1/devices/host-a/{device_id}", headers=ADMIN).get_json()


def test_a_poll_fetched_before_a_detach_does_not_attach_the_device_again(tmp_path):
    with two_host_world(tmp_path) as (app, client, _agents):
        created = client.post("/v1/vms", headers=ADMIN, json={
            "name": "held", "vcpus": 1, "memory_mib": 128, "host": "host-a",
            "start": False, "gpus": [{"id": GPU}]})
        assert created.status_code == 201, created.get_json()
        assert _device(client)["status"] == "attached"

        def detach():
            answer = client.delete(f"/v1/vms/held/devices/host-a/{GPU}", headers=ADMIN)
            assert answer.status_code == 200, answer.get_json()

        with stale_polls(app, detach) as watcher:
            watcher.fetch_now("host-a", background=False)
        device = _device(client)
        assert (device["status"], device["vm"]) == ("ready", None), device
        vm = client.get("/v1/vms/held", headers=ADMIN).get_json()
        assert GPU not in [d["id"] for d in vm["devices"]], vm

        # the next poll, fresh, agrees; and it is a full fetch (not 304 on the stale tag)
        poller(app).fetch_now("host-a", background=False)
        device = _device(client)
        assert (device["status"], device["vm"]) == ("ready", None), device


def test_a_stale_poll_still_records_a_device_held_outside_the_controller(tmp_path):
    """The guard delays what a stale answer says of holders; it does not lose it: a
    domain made on the agent behind the controller's back shows on the next poll."""
    from tests.conftest import AUTH
    with two_host_world(tmp_path) as (app, client, agents):
        other = "0000:af:00.0"
        assert _device(client, other)["status"] == "ready"

        def unrelated_create():
            answer = client.post("/v1/vms", headers=ADMIN, json={
                "name": "plain", "vcpus": 1, "memory_mib": 64, "host": "host-a",
                "start": False})
            assert answer.status_code == 201, answer.get_json()

        agents["host-a"].app.test_client().post("/v1/vms", headers=AUTH, json={
            "name": "outside", "vcpus": 1, "memory_mib": 64,
            "devices": [{"type": "pci", "id": other}]})
        with stale_polls(app, unrelated_create) as watcher:
            watcher.fetch_now("host-a", background=False)
        poller(app).fetch_now("host-a", background=False)
        device = _device(client, other)
        assert (device["status"], device["vm"]) == ("attached", None), device
