"""Pool quotas and pool deletion against racing claims, on SQLite and a real PostgreSQL.

Claims go through the same `place_and_claim` the API uses, each thread with its own
session; hosts, devices and pools are written directly (this is about the database, not
the agents). 8 T4 GPUs on 4 hosts, so the quota, not the supply, is what stops claims.
"""

import threading
import uuid
from collections import Counter

from flask import g
from sqlalchemy import select

from controller import pools
from controller.db import Database, Device, DevicePool, PoolShare, Vm, upgrade
from controller.claims import claim_on
from controller.placement import place_and_claim, policy_from
from controller.config import DEFAULTS
from hostplane.core.placement_pools import PoolAsk
from hostplane.core.pools import PoolMatch
from hostplane.core.scheduler import PlacementRequest
from hostplane.errors import ApiError
from tests.support import all_at_once
from tests.test_controller_claims import _cluster
from tests.test_controller_support import (controller_app, controller_config,  # noqa: F401
                                           database_url, insert_device_row, insert_host_row)

T4 = PoolMatch("10de", "1eb8")
RACERS = 100
QUOTA = 3


def _ask(name, tenant, host=None):
    return PlacementRequest(name=name, vcpus=1, memory_mib=64, tenant=tenant, host=host,
                            pools=[PoolAsk("t4", T4, 1)])


def _vm(name, tenant):
    return {"name": name, "tenant": tenant, "vcpus": 1, "memory_mib": 64, "spec": {},
            "op_id": uuid.uuid5(uuid.NAMESPACE_URL, name).hex, "op_since": 0.0}


def _race(count, work):
    """Run work(i) in `count` threads released together; their outcomes (status codes)."""
    def run(index):
        try:
            work(index)
            return 201
        except ApiError as exc:
            return (exc.status, exc.code)
    return Counter(all_at_once(count, run))


def test_100_racing_tenant_creates_against_a_quota_of_3_give_exactly_3(database_url):
    upgrade(database_url)
    db = Database(database_url, busy_timeout_s=60)
    policy = policy_from(DEFAULTS)
    _cluster(db)
    with db.write() as session:
        session.add(DevicePool(name="t4", vendor_id="10de", device_id="1eb8"))
        session.flush()
        session.add(PoolShare(pool="t4", tenant="acme", max_count=QUOTA))

    # each racer pinned to one of the 4 hosts, so claims hold different host locks at once
    counts = _race(RACERS, lambda i: place_and_claim(
        db, _ask(f"vm-{i}", "acme", f"claim-{i % 4}"), policy, _vm(f"vm-{i}", "acme")))
    assert counts[201] == QUOTA, counts
    assert set(counts) <= {201, (403, "quota_exceeded"), (409, "claim_contended"),
                           (422, "unplaceable")}, counts
    with db.read() as session:
        held = session.scalars(select(Device).where(Device.type == "gpu",
                                                    Device.vm.is_not(None))).all()
        vms = session.scalars(select(Vm)).all()
    assert len(held) == QUOTA and len(vms) == QUOTA
    assert {gpu.vm for gpu in held} == {vm.name for vm in vms}
    db.close()


def test_pool_deletion_waits_for_an_open_claim_from_the_pool_then_is_refused(database_url,
                                                                            tmp_path):
    """A claim holds the pool (its transaction open, its devices claimed); a delete
    started meanwhile must wait for it and then see the claim: 409, the pool kept."""
    upgrade(database_url)
    app = controller_app(controller_config(tmp_path, database_url))
    db = app.extensions["hostplane_controller"].db
    _cluster(db, hosts=1)
    with db.write() as session:
        session.add(DevicePool(name="t4", vendor_id="10de", device_id="1eb8"))
    outcome = []

    def delete():
        with app.app_context():
            g.principal = "admin"
            try:
                pools.delete("t4")
                outcome.append(204)
            except ApiError as exc:
                outcome.append((exc.status, exc.code, exc.details.get("vms")))

    deleter = threading.Thread(target=delete)
    with db.write() as session:
        assert claim_on(session, db, _ask("vm-1", None), policy_from(DEFAULTS), "claim-0",
                         _vm("vm-1", None))
        deleter.start()
        deleter.join(1.5)
        assert outcome == []   # still waiting for the claim's transaction
    deleter.join(30)
    assert outcome == [(409, "pool_in_use", ["vm-1"])]
    with db.read() as session:
        assert session.get(DevicePool, "t4") is not None
    app.extensions["hostplane_controller"].close()


def test_migration_0006_fills_subsystem_ids_and_physfn_from_kept_facts(database_url):
    import sqlalchemy as sa
    upgrade(database_url, "0005")
    engine = sa.create_engine(database_url)
    now = "2026-12-05 00:00:00+00:00"
    facts = {"0000:18:01.0": '{"subsystem_vendor_id": "8086", "subsystem_device_id": "0000", '
                             '"physfn": "0000:18:00.0"}', "0000:18:00.0": "{}"}
    with engine.begin() as db:
        insert_host_row(db, now)
        for device_id, kept in facts.items():
            insert_device_row(db, now, device_id, type="nic", vendor_id="8086",
                              product_id="1889", facts=kept, upstream="[]")
    upgrade(database_url)
    with engine.begin() as db:
        rows = {row[0]: tuple(row[1:]) for row in db.execute(sa.text(
            "SELECT id, subsystem_vendor_id, subsystem_device_id, physfn FROM devices"))}
        assert db.execute(sa.text("SELECT count(*) FROM device_pools")).scalar() == 0
    engine.dispose()
    assert rows == {"0000:18:01.0": ("8086", "0000", "0000:18:00.0"),
                    "0000:18:00.0": (None, None, None)}


def test_racing_creates_of_overlapping_pools_leave_exactly_one(database_url, tmp_path):
    from controller.api.schemas import DevicePoolCreate
    upgrade(database_url)
    app = controller_app(controller_config(tmp_path, database_url))
    db = app.extensions["hostplane_controller"].db
    _cluster(db, hosts=1)

    def work(index):
        with app.app_context():
            g.principal = "admin"
            pools.create(DevicePoolCreate(name=f"t4-{index}", vendor_id="10de",
                                          device_id="1eb8", **({"type": "gpu"} if index % 2
                                                               else {})))

    counts = _race(8, work)
    assert counts[201] == 1 and counts[(409, "pool_overlap")] == 7, counts
    with db.read() as session:
        assert len(session.scalars(select(DevicePool)).all()) == 1
    app.extensions["hostplane_controller"].close()
