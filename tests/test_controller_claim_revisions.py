"""What a claim and a settle write, on SQLite and a real PostgreSQL, now that they bypass
the ORM's unit of work (controller.db.drafts): the revision each write bumps (once per
host, never for a refusal), what a refused claim leaves, the devices' `updated_at`, the
poller's settle of a create from before operation ids, and mixed writers at once (no
deadlock, the cache equal to a fresh read)."""

import time
import uuid

import pytest
from sqlalchemy import select

from controller.db import Database, Device, DevicePool, Host, PoolShare, Vm, upgrade
from controller.placement import place_and_claim, policy_from
from controller.placement_views import existing_vm_view
from controller.recovery import settle_abandoned_creates
from controller.vm_records import held, render, settle_create
from controller.config import DEFAULTS
from hostplane.core.placement_pools import PoolAsk
from hostplane.core.pools import PoolMatch
from hostplane.core.scheduler import PlacementRequest
from hostplane.errors import ApiError
from tests.test_controller_claims import _ask, _cluster, _vm
from tests.test_controller_support import database_url  # noqa: F401 - fixture


def _revisions(db):
    with db.read() as session:
        return {h.id: h.revision for h in session.scalars(select(Host))}


def _held_by(db, name):
    with db.read() as session:
        return len(session.scalars(select(Device).where(Device.vm == name)).all())


def _db(url, hosts=2):
    upgrade(url)
    db = Database(url)
    _cluster(db, hosts=hosts)
    return db


def test_a_create_bumps_its_host_once_and_a_taken_name_changes_nothing(database_url):
    db, policy = _db(database_url), policy_from(DEFAULTS)
    before = _revisions(db)
    host, _devices, _node = place_and_claim(db, _ask("a"), policy, _vm("a"))
    after = _revisions(db)
    assert after[host.id] == before[host.id] + 1
    assert all(after[h] == before[h] for h in after if h != host.id)
    with pytest.raises(ApiError) as refused:
        place_and_claim(db, _ask("a"), policy, {**_vm("a"), "op_id": uuid.uuid4().hex})
    assert refused.value.code == "name_taken"
    assert _revisions(db) == after
    assert _held_by(db, "a") == 2
    db.close()


def test_claimed_devices_get_a_new_updated_at(database_url):
    db, policy = _db(database_url, hosts=1), policy_from(DEFAULTS)
    with db.read() as session:
        before = {d.id: d.updated_at for d in session.scalars(select(Device))}
    time.sleep(0.05)
    place_and_claim(db, _ask("a"), policy, _vm("a"))
    with db.read() as session:
        claimed = session.scalars(select(Device).where(Device.vm == "a")).all()
    assert claimed and all(d.updated_at > before[d.id] for d in claimed)
    db.close()


def test_an_attach_to_an_existing_vm_bumps_its_host_once(database_url):
    db, policy = _db(database_url, hosts=1), policy_from(DEFAULTS)
    host, _d, _n = place_and_claim(db, _ask("a"), policy, _vm("a"))
    with db.write() as session:
        session.get(Vm, "a").state = "running"
    with db.read() as session:
        view = existing_vm_view(session.get(Vm, "a"))
    before = _revisions(db)
    request = PlacementRequest(name="a", vcpus=1, memory_mib=64, existing_vm=view,
                               gpus=_ask("a").gpus)
    place_and_claim(db, request, policy, None)
    assert _revisions(db)[host.id] == before[host.id] + 1
    assert _held_by(db, "a") == 4
    db.close()


def test_a_move_for_usb_bumps_both_hosts_once(database_url):
    db, policy = _db(database_url, hosts=2), policy_from(DEFAULTS)
    with db.write() as session:
        session.add(Vm(name="m", host_id="claim-0", vcpus=1, memory_mib=64, spec={},
                       state="stopped"))
        session.add(Device(host_id="claim-1", id="1-1", kind="usb", type="usb",
                           vendor_id="0781", product_id="5567", name="stick", usb_major=2,
                           facts={}))
    with db.read() as session:
        view = existing_vm_view(session.get(Vm, "m"))
    before = _revisions(db)
    request = PlacementRequest(name="m", vcpus=1, memory_mib=64, usb=["1-1"], existing_vm=view)
    host, devices, _n = place_and_claim(db, request, policy, None)
    assert host.id == "claim-1" and devices == [("usb", "1-1")]
    after = _revisions(db)
    assert after == {h: r + 1 for h, r in before.items()}, (before, after)
    with db.read() as session:
        vm = session.get(Vm, "m")
        assert (vm.state, vm.moving_to) == ("moving", "claim-1")
        assert session.get(Device, ("claim-1", "1-1")).vm == "m"
    db.close()


def test_a_tenant_pool_claim_bumps_once_and_a_quota_refusal_changes_nothing(database_url):
    db, policy = _db(database_url, hosts=1), policy_from(DEFAULTS)
    with db.write() as session:
        session.add(DevicePool(name="t4", vendor_id="10de", device_id="1eb8"))
        session.flush()
        session.add(PoolShare(pool="t4", tenant="acme", max_count=1))

    def ask(name):
        return PlacementRequest(name=name, vcpus=1, memory_mib=64, tenant="acme",
                                pools=[PoolAsk("t4", PoolMatch("10de", "1eb8"), 1)])
    before = _revisions(db)
    place_and_claim(db, ask("a"), policy, {**_vm("a"), "tenant": "acme"})
    middle = _revisions(db)
    assert middle["claim-0"] == before["claim-0"] + 1
    with pytest.raises(ApiError) as refused:
        place_and_claim(db, ask("b"), policy, {**_vm("b"), "tenant": "acme"})
    assert refused.value.code == "quota_exceeded"
    assert _revisions(db) == middle
    with db.read() as session:
        assert session.get(Vm, "b") is None
    db.close()


def test_the_settle_answers_as_a_read_of_the_vm_does(database_url):
    db, policy = _db(database_url, hosts=1), policy_from(DEFAULTS)
    place_and_claim(db, _ask("a"), policy, _vm("a"))
    settled = settle_create(db, "a", _vm("a")["op_id"], "running")
    with db.read() as session:
        assert settled == render(session.get(Vm, "a"), held(session, "a"))
    db.close()


def _legacy_create(db, name):
    """A VM row still `creating` from before operation ids (op_id NULL)."""
    with db.write() as session:
        session.add(Vm(name=name, host_id="claim-0", vcpus=1, memory_mib=64, spec={},
                       state="creating", op_id=None, op_since=None))


class _AgentWithDomain:
    """Fake agent (no agent is needed to show it: the fault is in the database write):
    it answers that every asked VM's domain exists and runs."""

    def vm(self, name):
        return {"name": name, "state": "running", "op_id": None}


def test_the_poller_settles_a_create_from_before_operation_ids(database_url):
    db = _db(database_url, hosts=1)
    _legacy_create(db, "old")
    outcomes = settle_abandoned_creates(db, lambda host: _AgentWithDomain(), grace_s=0)
    assert outcomes.get("old") == "completed"
    with db.read() as session:
        assert session.get(Vm, "old").state == "running"
    db.close()


def test_racing_creates_of_one_name_on_two_hosts_leave_one_vm_and_its_devices(database_url):
    from collections import Counter
    from tests.support import all_at_once
    upgrade(database_url)
    db = Database(database_url, busy_timeout_s=60)
    _cluster(db, hosts=2)
    policy = policy_from(DEFAULTS)
    before = _revisions(db)

    def create(index):
        ask = PlacementRequest(name="dup", vcpus=1, memory_mib=64, host=f"claim-{index % 2}",
                               gpus=_ask("dup").gpus)
        try:
            place_and_claim(db, ask, policy, {**_vm("dup"), "op_id": uuid.uuid4().hex})
            return 201
        except ApiError as exc:
            return exc.code
    counts = Counter(all_at_once(40, create))
    # the process's own held claims may fill a host's snapshot first: 422 before any claim
    assert counts[201] == 1 and set(counts) <= {201, "name_taken", "unplaceable"}, counts
    with db.read() as session:
        vm = session.get(Vm, "dup")
        held_rows = session.scalars(select(Device).where(Device.vm.is_not(None))).all()
    assert {(d.host_id, d.vm) for d in held_rows} == {(vm.host_id, "dup")}
    after = _revisions(db)
    assert after == {h: r + (h == vm.host_id) for h, r in before.items()}, (before, after)
    db.close()


def test_mixed_writers_never_deadlock_and_the_cache_stays_the_databases(database_url, caplog):
    """Creates, forgotten creates, attaches and poller-like ORM device writes at once on two
    hosts: no deadlock (PostgreSQL's 40P01, retried by Database.transaction, is logged), no
    device held by a VM that is gone, and the process's snapshot equals a fresh one."""
    import logging
    import random
    import threading
    from dataclasses import replace
    from controller.db.models import Device as D
    from controller.placement_views import snapshot
    from controller.snapshot_cache import cache_for
    from controller.vm_records import forget_create
    from tests.support import all_at_once
    upgrade(database_url)
    db = Database(database_url, busy_timeout_s=60)
    _cluster(db, hosts=2)
    with db.write() as session:   # more GPUs, so the run is not over at once
        for h in range(2):
            for bus in range(0x10, 0x30):
                for function, kind, product in ((0, "gpu", "1eb8"), (1, "gpu-audio", "10f8")):
                    session.add(D(host_id=f"claim-{h}", id=f"0000:{bus:02x}:00.{function}",
                                  kind="pci", type=kind, vendor_id="10de", product_id=product,
                                  name=kind, iommu_group=bus, facts={}))
    policy = policy_from(DEFAULTS)
    caplog.set_level(logging.INFO, logger="controller.db")
    stop = time.monotonic() + 8
    errors, lock = [], threading.Lock()

    def worker(index):
        rng = random.Random(index)
        n = 0
        while time.monotonic() < stop:
            n += 1
            name = f"w{index}-{n}"
            try:
                choice = rng.random()
                if choice < 0.5:   # only the "-keep" VMs are attached to (an attach
                    keep = rng.random() < 0.5   # racing a delete is another matter)
                    name += "-keep" if keep else ""
                    place_and_claim(db, _ask(name), policy, _vm(name))
                    if keep:   # settled: an attach waits until a create settles
                        settle_create(db, name, _vm(name)["op_id"], "running")
                    else:
                        forget_create(db, name, _vm(name)["op_id"])
                elif choice < 0.75:
                    with db.read() as session:
                        vms = session.scalars(select(Vm).where(Vm.name.like("%-keep"))).all()
                    if vms:
                        vm = rng.choice(vms)
                        request = PlacementRequest(name=vm.name, vcpus=1, memory_mib=64,
                                                   existing_vm=existing_vm_view(vm), gpus=_ask("x").gpus)
                        place_and_claim(db, request, policy, None)
                else:
                    host = f"claim-{rng.randrange(2)}"

                    def poll(session):
                        db.lock_hosts(session, [host])
                        for device in session.scalars(db.locked(select(D).where(
                                D.host_id == host, D.status == "ready").limit(3))):
                            device.numa_node = rng.randrange(2)   # scheduled: bumps
                    db.transaction(poll)
            except ApiError:
                pass
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                with lock:
                    errors.append(repr(exc))
        return n

    all_at_once(8, worker)
    assert errors == []
    deadlocks = [r.getMessage() for r in caplog.records if "40P01" in r.getMessage()]
    assert deadlocks == []
    with db.read() as session:
        names = {vm.name for vm in session.scalars(select(Vm))}
        holders = {d.vm for d in session.scalars(select(D).where(D.vm.is_not(None)))}
        fresh = snapshot(session)
    assert holders <= names
    cache = cache_for(db)
    cache.refresh()

    def parts(snap):
        return {host_id: (host, sorted(devices, key=repr),   # order is no difference
                          sorted((replace(vm, state="-") for vm in vms), key=repr))
                for host_id, (host, devices, vms) in snap.index.parts.items()}
    held_parts, fresh_parts = parts(cache.snapshot), parts(fresh)
    diff = {}
    for host_id in fresh_parts:
        for label, mine, theirs in zip(("host", "devices", "vms"), held_parts[host_id],
                                       fresh_parts[host_id]):
            if mine != theirs:
                if label == "host":
                    diff[(host_id, label)] = (mine, theirs)
                else:
                    diff[(host_id, label)] = (sorted(set(mine) - set(theirs), key=repr),
                                              sorted(set(theirs) - set(mine), key=repr))
    assert diff == {}, (diff, cache.revisions, _revisions(db))
    db.close()
