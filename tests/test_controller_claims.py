"""Atomic claims at the database, on SQLite and on a real PostgreSQL server.

Many threads claim GPUs through the same `place_and_claim` the API uses, each with its
own session, against 8 free GPUs on 4 hosts: exactly 8 win, no device has two holders,
and a lost race ends as 422 (nothing left) or 409 (still contended), never a double claim.
Hosts and devices are written directly: this is about the database, not the agents.
"""

import uuid
from collections import Counter

import pytest
from sqlalchemy import select

from controller.claims import NoLongerFits, claim_on
from controller.db import Database, Device, Host, Vm, upgrade
from controller.placement import place_and_claim, policy_from
from controller.placement_views import existing_vm_view
from controller.vm_records import forget_create, settle_create
from controller.config import DEFAULTS
from hostplane.core import vm_states
from hostplane.core.scheduler import GpuAsk, PlacementRequest
from hostplane.errors import ApiError, Conflict
from tests.support import all_at_once
from tests.test_controller_support import database_url  # noqa: F401 - fixture

CLAIMERS = 200


def _cluster(db, hosts=4):
    with db.write() as session:
        for h in range(hosts):
            session.add(Host(id=f"claim-{h}", url="http://127.0.0.1:9", token="t",
                             status="connected", iommu_ready=True, cpu_threads=64,
                             memory_mib=262144))
        session.flush()
        for h in range(hosts):
            for bus in ("3b", "af"):
                for function, kind, product in ((0, "gpu", "1eb8"), (1, "gpu-audio", "10f8")):
                    session.add(Device(host_id=f"claim-{h}", id=f"0000:{bus}:00.{function}",
                                       kind="pci", type=kind, vendor_id="10de",
                                       product_id=product, name=kind,
                                       iommu_group=int(bus, 16), facts={}))


def _ask(name):
    return PlacementRequest(name=name, vcpus=1, memory_mib=64,
                            gpus=[GpuAsk(vendor_id="10de", device_id="1eb8")])


def _vm(name):
    """The row a create claims with (its operation id derived from the name, for the test)."""
    return {"name": name, "vcpus": 1, "memory_mib": 64, "spec": {},
            "op_id": uuid.uuid5(uuid.NAMESPACE_URL, name).hex, "op_since": 0.0}


def test_concurrent_claims_for_8_gpus_give_exactly_8_and_no_device_twice(database_url):
    upgrade(database_url)
    db = Database(database_url, busy_timeout_s=60)
    policy = policy_from(DEFAULTS)
    _cluster(db)

    def claim(index):
        try:
            place_and_claim(db, _ask(f"vm-{index}"), policy, _vm(f"vm-{index}"))
            return 201
        except ApiError as exc:
            return exc.status

    counts = Counter(all_at_once(CLAIMERS, claim))
    assert counts[201] == 8 and set(counts) <= {201, 409, 422}, counts
    with db.read() as session:
        gpus = session.scalars(select(Device).where(Device.type == "gpu")).all()
        audio = session.scalars(select(Device).where(Device.type == "gpu-audio")).all()
        vms = session.scalars(select(Vm)).all()
    assert len({gpu.vm for gpu in gpus}) == 8 and all(gpu.status == "attached" for gpu in gpus)
    # each GPU's audio function went to the same VM, in the same transaction
    by_slot = {(d.host_id, d.id[:-2]): d.vm for d in gpus}
    assert all(by_slot[(d.host_id, d.id[:-2])] == d.vm for d in audio)
    assert sorted(vm.name for vm in vms) == sorted(gpu.vm for gpu in gpus)
    db.close()


def test_released_claim_is_free_for_the_next_request(database_url):
    upgrade(database_url)
    db = Database(database_url)
    policy = policy_from(DEFAULTS)
    _cluster(db, hosts=1)
    place_and_claim(db, _ask("first"), policy, _vm("first"))
    assert forget_create(db, "first", _vm("first")["op_id"])
    with db.read() as session:
        assert session.get(Vm, "first") is None
        assert {d.status for d in session.scalars(select(Device))} == {"ready"}
    for name in ("second", "third"):
        place_and_claim(db, _ask(name), policy, _vm(name))
    try:
        place_and_claim(db, _ask("fourth"), policy, _vm("fourth"))
    except ApiError as exc:
        assert exc.status == 422
        assert any("only 0 of 1" in r or "attached to" in r
                   for r in exc.details["hosts"]["claim-0"]), exc.details
    else:
        raise AssertionError("a third GPU was claimed on a host with two")
    db.close()


def test_a_late_settle_changes_only_the_create_it_answers(database_url):
    """A create whose agent answered late finds its row deleted and the name taken again
    by another create: it must not settle that other create's row (which stays `creating`
    until its own agent answers), nor a row being deleted."""
    upgrade(database_url)
    db = Database(database_url)
    policy = policy_from(DEFAULTS)
    _cluster(db, hosts=1)
    late, current = _vm("vm"), {**_vm("vm"), "op_id": uuid.uuid4().hex}
    place_and_claim(db, _ask("vm"), policy, late)
    assert forget_create(db, "vm", late["op_id"])
    place_and_claim(db, _ask("vm"), policy, current)

    with pytest.raises(Conflict) as refused:
        settle_create(db, "vm", late["op_id"], "running")
    assert refused.value.code == "vm_gone"
    with db.read() as session:
        row = session.get(Vm, "vm")
        assert (row.state, row.op_id) == ("creating", current["op_id"])

    view = settle_create(db, "vm", current["op_id"], "running")
    assert view["state"] == "running" and view["host"] == "claim-0"
    assert sorted((d["type"], d["status"]) for d in view["devices"]) == [
        ("gpu", "attached"), ("gpu-audio", "attached")]

    with db.write() as session:   # a delete under way: a create's answer cannot end it
        vm_states.begin_delete(session.get(Vm, "vm"), op_stale=False, now=0.0)
    with pytest.raises(vm_states.IllegalVmTransition):
        settle_create(db, "vm", current["op_id"], "running")
    with db.read() as session:
        assert session.get(Vm, "vm").state == "deleting"
    db.close()


def test_a_claim_that_finds_its_host_full_changes_nothing(database_url):
    """The claim bumps the host's revision as it locks the row; when the host turns out
    full, that bump is rolled back with the rest, so no cache reloads the host for it."""
    upgrade(database_url)
    db = Database(database_url)
    policy = policy_from(DEFAULTS)
    _cluster(db, hosts=1)
    for name in ("first", "second"):
        place_and_claim(db, _ask(name), policy, _vm(name))
    with db.read() as session:
        before = session.get(Host, "claim-0").revision
    with pytest.raises(NoLongerFits):
        db.transaction(lambda session: claim_on(session, db, _ask("third"), policy,
                                                "claim-0", _vm("third")))
    with db.read() as session:
        assert session.get(Host, "claim-0").revision == before
        assert session.get(Vm, "third") is None
    db.close()


def test_a_create_from_before_operation_ids_still_settles(database_url):
    """A row recorded before creates had operation ids has none; the poller settles it
    with `op_id` None (any domain of its name is it). The settle's statement must match
    that row as `vm_states.created` does: a SQL `op_id = NULL` matches nothing."""
    upgrade(database_url)
    db = Database(database_url)
    _cluster(db, hosts=1)
    with db.write() as session:
        session.add(Vm(name="older", host_id="claim-0", vcpus=1, memory_mib=64, spec={},
                       state="creating", op_id=None, op_since=None))
    assert settle_create(db, "older", None, "running")["state"] == "running"
    with pytest.raises(Conflict):   # a create of an operation id is not that row
        settle_create(db, "older", uuid.uuid4().hex, "running")
    db.close()


def test_an_attach_to_a_vm_deleted_meanwhile_claims_nothing(database_url):
    """An attach looks its VM up, then places and claims: a delete between the two must
    not leave the claim handing devices to a VM that is gone or going."""
    upgrade(database_url)
    db = Database(database_url)
    policy = policy_from(DEFAULTS)
    _cluster(db, hosts=1)
    place_and_claim(db, PlacementRequest(name="vm", vcpus=1, memory_mib=64), policy, _vm("vm"))
    settle_create(db, "vm", _vm("vm")["op_id"], "running")
    with db.read() as session:
        seen = existing_vm_view(session.get(Vm, "vm"))
    attach = PlacementRequest(name="vm", vcpus=1, memory_mib=64, existing_vm=seen,
                              gpus=[GpuAsk(vendor_id="10de", device_id="1eb8")])

    with db.write() as session:   # a delete under way
        vm_states.begin_delete(session.get(Vm, "vm"), op_stale=False, now=0.0)
    with pytest.raises(Conflict) as refused:
        place_and_claim(db, attach, policy, None)
    assert refused.value.code == "vm_busy"

    with db.write() as session:   # and done
        session.delete(session.get(Vm, "vm"))
    with pytest.raises(Conflict) as refused:
        place_and_claim(db, attach, policy, None)
    assert refused.value.code == "vm_gone"
    with db.read() as session:
        assert {(d.status, d.vm) for d in session.scalars(select(Device))} == {("ready", None)}
    db.close()


@pytest.mark.parametrize("taker", ["globex", "acme"])
def test_an_attach_to_a_name_deleted_and_taken_again_claims_nothing(database_url, taker):
    """acme looks its VM "vm" up; meanwhile it is deleted and a VM of the same name is
    made on the same host, by another tenant or by acme again. The claim must not hand
    that VM devices: the row is another create's (its operation id)."""
    upgrade(database_url)
    db = Database(database_url)
    policy = policy_from(DEFAULTS)
    _cluster(db, hosts=1)
    with db.write() as session:   # the GPUs are shared with tenants
        for device in session.scalars(select(Device)):
            device.shared = True

    def create(tenant):
        row = {**_vm("vm"), "tenant": tenant, "op_id": uuid.uuid4().hex}
        place_and_claim(db, PlacementRequest(name="vm", vcpus=1, memory_mib=64,
                                             tenant=tenant), policy, row)
        settle_create(db, "vm", row["op_id"], "running")
    create("acme")
    with db.read() as session:
        seen = existing_vm_view(session.get(Vm, "vm"))
    attach = PlacementRequest(name="vm", vcpus=1, memory_mib=64, existing_vm=seen,
                              tenant="acme", gpus=[GpuAsk(vendor_id="10de", device_id="1eb8")])
    with db.write() as session:
        session.delete(session.get(Vm, "vm"))
    create(taker)

    with pytest.raises(Conflict) as refused:
        place_and_claim(db, attach, policy, None)
    assert refused.value.code == "vm_gone"
    with db.read() as session:
        assert {d.vm for d in session.scalars(select(Device))} == {None}
    db.close()
