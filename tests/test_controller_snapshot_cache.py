"""Two controller processes' worth of apps on one database (SQLite and a real PostgreSQL),
each with its own cached scheduler snapshot: what one changes, the other's explain sees at
once, and a snapshot with nothing changed is not read again.

Real agents on loopback (host-a: GPUs 10de:1eb8, host-b: 10de:2236).
"""

from dataclasses import replace

import pytest
from sqlalchemy import select, update

from controller.db.models import Device, Host
from controller.placement_views import cluster_views, snapshot
from controller.snapshot_cache import cache_for
from hostplane.core.scheduler import GpuAsk, PlacementRequest
from tests.test_controller_support import (ADMIN, NVIDIA_A10, LoopbackAgent, controller_app,
                                           controller_config, database_url, gpu_host, register)

__all__ = ["database_url"]   # the fixture, parametrised over SQLite and PostgreSQL
A10 = {"vendor_id": "10de", "device_id": "2236"}


@pytest.fixture
def two_controllers(tmp_path, database_url):
    agents = [LoopbackAgent(tmp_path, "host-a", gpu_host()),
              LoopbackAgent(tmp_path, "host-b", gpu_host(NVIDIA_A10, "4C530002"))]
    apps = [controller_app(controller_config(tmp_path, database_url)) for _ in range(2)]
    try:
        for agent in agents:
            register(apps[0].test_client(), agent)
        yield [app.test_client() for app in apps], apps
    finally:
        for name in [vm["name"] for vm in apps[0].test_client().get(
                "/v1/vms", headers=ADMIN).get_json()["vms"]]:
            apps[0].test_client().delete(f"/v1/vms/{name}", headers=ADMIN)
        for app in apps:
            app.extensions["hostplane_controller"].close()
        for agent in agents:
            agent.stop()


def explain(client, **body):
    answer = client.post("/v1/schedule/explain", headers=ADMIN, json={
        "name": "probe", "vcpus": 1, "memory_mib": 64, **body})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def cache(app):
    return cache_for(app.extensions["hostplane_controller"].db)


def test_each_process_sees_what_another_changed(two_controllers):
    (one, other), apps = two_controllers
    assert explain(other, gpus=[A10])["chosen"] == "host-b"          # other's cache is warm
    # a claim made by the first process
    made = one.post("/v1/vms", headers=ADMIN, json={
        "name": "cache-vm", "vcpus": 2, "memory_mib": 256, "start": False,
        "gpus": [{**A10, "count": 2}]})
    assert made.status_code == 201, made.get_json()
    refused = explain(other, gpus=[A10])
    assert refused["chosen"] is None
    assert any("attached to cache-vm" in r for r in refused["rejected"]["host-b"])
    # a host state change
    assert one.patch("/v1/hosts/host-a", headers=ADMIN,
                     json={"state": "maintenance"}).status_code == 200
    assert "in maintenance" in explain(other)["rejected"]["host-a"]
    # a host gone, and a VM gone with its devices
    assert one.delete("/v1/vms/cache-vm", headers=ADMIN).status_code == 204
    assert one.delete("/v1/hosts/host-a", headers=ADMIN).status_code == 204
    after = explain(other, gpus=[A10])
    assert after["chosen"] == "host-b" and "host-a" not in after["rejected"]
    assert cache(apps[1]).reloads["full"] == 1   # all of that came in host by host


def test_nothing_changed_reads_no_host_again(two_controllers):
    (one, _), apps = two_controllers
    explain(one)
    before = dict(cache(apps[0]).reloads)
    for _ in range(3):
        explain(one, gpus=[A10])
    assert cache(apps[0]).reloads == before
    assert one.patch("/v1/devices/host-b/0000:3b:00.0", headers=ADMIN,
                     json={"state": "disabled"}).status_code == 200
    assert any("disabled by admin" in r or "not viable" in r
               for r in explain(one, gpus=[{"id": "0000:3b:00.0"}])["rejected"]["host-b"])
    assert cache(apps[0]).reloads == {"full": before["full"], "hosts": before["hosts"] + 1}


def test_placements_under_way_are_held_so_the_next_choose_around_them(two_controllers):
    """Concurrent creates in one process: each placement sees the claims still under way
    (chosen, not yet committed), so they spread over free devices instead of all racing
    for the best one; once settled, the host is read again as the database has it."""
    _, apps = two_controllers
    controller = apps[0].extensions["hostplane_controller"]
    asks = (GpuAsk(vendor_id=A10["vendor_id"], device_id=A10["device_id"]),)
    first, second, third = (PlacementRequest(f"held-{n}", 1, 64, gpus=asks) for n in range(3))
    held = cache(apps[0])
    one = held.place(first, controller.policy, every_host=False, hold=True).chosen
    two = held.place(second, controller.policy, every_host=False, hold=True).chosen
    assert (one.host_id, two.host_id) == ("host-b", "host-b")
    assert {one.devices[0], two.devices[0]} == {("pci", "0000:3b:00.0"), ("pci", "0000:af:00.0")}
    refused = held.place(third, controller.policy, every_host=False).rejected["host-b"]
    assert any("attached to held-0" in reason for reason in refused)
    held.settled(first)
    held.settled(second)   # neither was claimed: both GPUs are free again
    assert held.place(third, controller.policy, every_host=False).chosen.host_id == "host-b"


def test_a_create_right_after_a_change_made_here_sees_the_change(two_controllers):
    """A create may place on a snapshot checked a moment ago, but never on one older than
    a host change this process just made: host-a, back from maintenance, takes the VM."""
    (one, _), _ = two_controllers
    assert one.patch("/v1/hosts/host-a", headers=ADMIN,
                     json={"state": "maintenance"}).status_code == 200
    first = one.post("/v1/vms", headers=ADMIN, json={
        "name": "busy-b", "vcpus": 8, "memory_mib": 256, "start": False})
    assert first.get_json()["host"] == "host-b"
    assert one.patch("/v1/hosts/host-a", headers=ADMIN,
                     json={"state": "enabled"}).status_code == 200
    second = one.post("/v1/vms", headers=ADMIN, json={
        "name": "back-on-a", "vcpus": 1, "memory_mib": 64, "start": False})
    assert second.get_json()["host"] == "host-a"


def test_a_create_made_here_is_not_read_again_yet_the_snapshot_stays_the_databases(
        two_controllers):
    """A create's claim took exactly what its process's snapshot assumed, on the revision
    the snapshot had: the host is not read again (it was, once per create), and the
    snapshot equals one built afresh from the database — but for the VMs' states, which
    a placement does not count. The other process reads the host again and sees it."""
    (one, other), apps = two_controllers
    explain(one, gpus=[A10])
    explain(other, gpus=[A10])
    before = dict(cache(apps[0]).reloads)
    for name in ("here-1", "here-2"):
        made = one.post("/v1/vms", headers=ADMIN, json={
            "name": name, "vcpus": 2, "memory_mib": 256, "start": False, "gpus": [A10]})
        assert made.status_code == 201 and made.get_json()["host"] == "host-b"
    explain(one)   # reads the revisions again
    assert cache(apps[0]).reloads == before

    held = cache(apps[0])
    with apps[0].extensions["hostplane_controller"].db.read() as session:
        fresh = snapshot(session)

    def parts(snap):
        return {host_id: (host, devices, [replace(vm, state="-") for vm in vms])
                for host_id, (host, devices, vms) in snap.index.parts.items()}
    assert held.snapshot.hosts == fresh.hosts
    assert parts(held.snapshot) == parts(fresh)
    assert held.snapshot.index.capacity == fresh.index.capacity
    refused = explain(other, gpus=[A10])
    assert refused["chosen"] is None
    assert any("attached to here-" in r for r in refused["rejected"]["host-b"])


def _as_database_has(app, host_id):
    """(revision, part) of `host_id` read afresh, VMs in name order and stateless (a
    placement counts no VM's state)."""
    db = app.extensions["hostplane_controller"].db
    with db.read() as session:
        revision = session.execute(select(Host.revision).where(Host.id == host_id)).scalar_one()
        hosts, devices, vms = cluster_views(session, [host_id])
    return revision, (hosts[0], list(devices), _stateless(vms))


def _stateless(vms):
    return sorted((replace(vm, state="-") for vm in vms), key=lambda vm: vm.name)


def test_what_a_claim_may_take_as_read_is_the_database_without_the_claims_under_way(
        two_controllers):
    """A create's claim takes its host's devices and VMs as the cache read them when the
    locked host still has that revision. So what the cache gives it must be the
    database's rows at that revision: without the claims under way here, with those
    that settled as assumed; and its revision never one the database has not reached."""
    (one, other), apps = two_controllers
    controller = apps[0].extensions["hostplane_controller"]
    explain(one, gpus=[A10])
    held = cache(apps[0])

    def as_read_is_the_database():
        revision, (host, devices, vms) = held.as_read("host-b")
        now, part = _as_database_has(apps[0], "host-b")
        assert revision <= now
        return revision == now and (host, list(devices), _stateless(vms)) == part

    under_way = PlacementRequest("under-way", 1, 64, host="host-b")   # room, no device
    assert held.place(under_way, controller.policy, every_host=False,
                      hold=True).chosen.host_id == "host-b"
    assert as_read_is_the_database()
    made = one.post("/v1/vms", headers=ADMIN, json={
        "name": "settled", "vcpus": 2, "memory_mib": 256, "start": False, "gpus": [A10]})
    assert made.status_code == 201 and made.get_json()["host"] == "host-b"
    assert as_read_is_the_database()   # one revision on, "under-way" still left out
    held.settled(under_way)
    assert as_read_is_the_database()
    # a change made elsewhere: the revision moved on, so the claim would read the rows
    assert other.post("/v1/vms", headers=ADMIN, json={
        "name": "elsewhere", "vcpus": 1, "memory_mib": 64, "start": False,
        "gpus": [A10]}).status_code == 201
    assert not as_read_is_the_database()
    explain(one)
    assert as_read_is_the_database()


def test_a_device_taken_without_a_revision_bump_is_never_claimed_twice(two_controllers):
    """Every write that changes a device bumps its host's revision; should one ever miss
    it, a claim taking the host as read would still not hand out a device another VM
    holds: its write checks each device is still ready, and the create tries again on
    the host read afresh."""
    (one, _), apps = two_controllers
    explain(one, gpus=[A10])
    db = apps[0].extensions["hostplane_controller"].db
    with db.engine.begin() as connection:   # behind the revision's back, as no writer should
        connection.execute(update(Device).where(
            Device.host_id == "host-b", Device.id == "0000:3b:00.0").values(
            status="attached", vm="elsewhere"))
    made = one.post("/v1/vms", headers=ADMIN, json={
        "name": "second", "vcpus": 1, "memory_mib": 64, "start": False, "gpus": [A10]})
    assert made.status_code == 201, made.get_json()
    assert [d["id"] for d in made.get_json()["devices"] if d["type"] == "gpu"] == [
        "0000:af:00.0"]
    with db.read() as session:
        holder = session.execute(select(Device.vm).where(
            Device.host_id == "host-b", Device.id == "0000:3b:00.0")).scalar_one()
    assert holder == "elsewhere"


class _SettleAfterApply:
    """The snapshot, forwarding everything; once a refresh has applied what it read and let
    go of the cache's lock, `hook` runs (a create settling on another thread just then)."""

    def __init__(self, real, lock, hook):
        self.__dict__.update(_real=real, _lock=lock, _hook=hook, _applied=False)

    def apply(self, changes):
        self.__dict__["_applied"] = True
        return self._real.apply(changes)

    def __getattr__(self, name):
        if self._applied and self._hook is not None and not self._lock.locked():
            hook, self.__dict__["_hook"] = self._hook, None
            hook()
        return getattr(self._real, name)


def test_a_create_settling_while_a_refresh_swaps_its_host_in_is_counted_once(
        two_controllers):
    """A refresh reads a host whose revision moved because a create of this process
    committed there, while that create is still held (so it is assumed again on the rows
    that already hold it); the create settles just after the refresh has swapped the rows
    in, before the refresh records their revision. The settle must not take the host as
    'exactly as assumed, one revision on': that would label a part counting the VM twice
    with the database's revision, which no refresh reads again and a claim takes as read."""
    import time
    import uuid
    from controller.claims import claim_on
    (one, _), apps = two_controllers
    controller = apps[0].extensions["hostplane_controller"]
    db = controller.db
    explain(one, gpus=[A10])
    held = cache(apps[0])
    request = PlacementRequest("racing", 2, 256, host="host-b")
    assert held.place(request, controller.policy, every_host=False,
                      hold=True).chosen.host_id == "host-b"
    new_vm = {"name": "racing", "tenant": None, "vcpus": 2, "memory_mib": 256,
              "anti_affinity_group": None, "spec": {"networks": [], "start": False},
              "op_id": uuid.uuid4().hex, "op_since": time.time()}
    claimed = db.transaction(lambda session: claim_on(
        session, db, request, controller.policy, "host-b", new_vm, held.as_read("host-b")))
    real = held.snapshot
    held.snapshot = _SettleAfterApply(real, held.lock,
                                      lambda: held.settled(request, claimed))
    try:
        held.refresh()
    finally:
        held.snapshot = real
    if held.held:   # no such window (the revisions recorded with the rows): just after
        held.settled(request, claimed)
    explain(one)   # the next placement's refresh
    revision, (host, devices, vms) = held.as_read("host-b")
    now, part = _as_database_has(apps[0], "host-b")
    assert [vm.name for vm in vms].count("racing") == 1
    assert (revision, (host, list(devices), _stateless(vms))) == (now, part)
