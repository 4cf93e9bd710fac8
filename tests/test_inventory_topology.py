"""Ids with 5-digit PCI domains through every endpoint that takes one, the topology and
assignability the controller stores, and the host's own disk and NIC refused for real.

Agents are real (synthetic sysfs trees, real libvirtd or the in-memory test driver);
the controller is real on SQLite. The live-host tests read this machine's own /sys,
/proc and routes: its root disk and its NIC are virtio PCI functions.
"""

import os
import subprocess

import pytest

from agent.config import DEFAULTS  # noqa: F401 - the config the agents below are built from
from agent.inventory.store import Inventory
from agent.inventory.generation import SharedGeneration
from agent.inventory.sysfs import SysfsTree
from agent.app import create_app
from tests.conftest import AUTH, agent_config
from tests.hosts import NVIDIA, hgx_server
from tests.synthetic import PciFunction as F, write_sysfs_tree
from tests.test_controller_support import ADMIN, loopback_world
from tests.test_virt_support import (RUN_PREFIX, URI, agent_client, create_vm, inactive_xml,  # noqa: F401
                                     lv, pci_source, prefix)

VMD_DRIVE, WIDE_GPU = "10000:e1:00.0", "10001:01:00.0"


def hgx_with_wide_domain_gpu():
    """hgx_server plus a GPU in domain 10001 under a plain root port (no VMD): assignable."""
    host = hgx_server()
    host.pci += [F("10001:00:01.0", "8086", "347a", "060400", "pcieport", 60, 1),
                 F(WIDE_GPU, NVIDIA, "20b0", "030200", "nvidia", 61, 1, parent="10001:00:01.0")]
    return host


# --- agent -------------------------------------------------------------------------------
@pytest.fixture
def agent(tmp_path, lv):  # noqa: F811
    with agent_client(tmp_path, host=hgx_with_wide_domain_gpu()) as (client, _):
        yield client


def attach(client, vm, device_id):
    return client.post(f"/v1/vms/{vm}/devices", headers=AUTH, json={"type": "pci", "id": device_id})


def test_agent_reads_and_refuses_ids_with_5_digit_domains(agent, lv, prefix):  # noqa: F811
    client = agent
    shown = client.get("/v1/devices/pci/10000:E1:00.0", headers=AUTH)
    assert shown.status_code == 200 and shown.get_json()["id"] == VMD_DRIVE
    assert client.get("/v1/devices/pci/00010000:e1:00.0", headers=AUTH).get_json()["id"] == VMD_DRIVE
    # a short id is domain 0000, which holds no such function
    short = client.get("/v1/devices/pci/e1:00.0", headers=AUTH)
    assert short.status_code == 404
    assert client.get("/v1/devices/pci/100000000:e1:00.0", headers=AUTH).status_code == 400

    vm = f"{prefix}-wide"
    create_vm(client, vm)
    before = inactive_xml(lv, vm)
    refused = attach(client, vm, VMD_DRIVE)
    assert refused.status_code == 409
    error = refused.get_json()["error"]
    assert error["code"] == "device_not_assignable"
    assert "behind Intel VMD controller 0000:00:0e.0" in error["details"]["reason"]
    assert inactive_xml(lv, vm) == before, "a refusal changes nothing"

    taken = attach(client, vm, WIDE_GPU.upper())
    assert taken.status_code == 200, taken.get_json()
    assert {"type": "pci", "id": WIDE_GPU, "live": False, "persistent": True} in \
        taken.get_json()["devices"]
    assert pci_source(WIDE_GPU) in inactive_xml(lv, vm)     # domain='0x10001' for libvirt
    assert client.get(f"/v1/devices/pci/{WIDE_GPU}", headers=AUTH).get_json()["attached_to"] == vm
    again = attach(client, vm, WIDE_GPU)
    assert again.status_code == 200, "idempotent with the wide id too"
    detached = client.delete(f"/v1/vms/{vm}/devices/{WIDE_GPU}", headers=AUTH)
    assert detached.status_code == 200 and detached.get_json()["devices"] == []
    assert pci_source(WIDE_GPU) not in inactive_xml(lv, vm)
    created = create_vm(client, f"{prefix}-born", devices=[{"type": "pci", "id": WIDE_GPU}])
    assert [d["id"] for d in created["devices"]] == [WIDE_GPU]
    assert pci_source(WIDE_GPU) in inactive_xml(lv, f"{prefix}-born")


# --- controller --------------------------------------------------------------------------
@pytest.fixture
def hgx_world(tmp_path):
    with loopback_world(tmp_path, {"hgx": hgx_with_wide_domain_gpu()}) as (_, client, _agents):
        yield client


def listing(client, **filters):
    answer = client.get("/v1/devices", headers=ADMIN, query_string=filters)
    assert answer.status_code == 200, answer.get_json()
    return {d["id"]: d for d in answer.get_json()["devices"]}


def test_controller_keeps_topology_and_never_calls_an_unassignable_device_ready(hgx_world):
    client = hgx_world
    gpus = listing(client, type="gpu")
    assert len(gpus) == 9 and all(d["status"] == "ready" for d in gpus.values())
    assert "0000:02:00.0" not in gpus, "the BMC console is no GPU"
    display = listing(client, type="display")["0000:02:00.0"]
    assert display["status"] == "not_assignable" and "BMC display" in display["not_assignable_reason"]
    gpu = gpus["0000:07:00.0"]
    assert (gpu["numa_node"], gpu["upstream"]) == (0, ["0000:06:00.0"])
    assert gpu["link"]["current_speed"] == "16.0 GT/s PCIe" and gpu["link"]["max_width"] == 16
    assert gpus["0000:b7:00.0"]["numa_node"] == 1
    bridges = listing(client, type="bridge")
    assert bridges and all(d["status"] == "not_assignable" and not d["assignable"]
                           and d["not_assignable_reason"] for d in bridges.values())
    switches = listing(client, type="nvswitch")
    assert len(switches) == 6 and all(d["status"] == "ready" for d in switches.values())
    everything = listing(client)
    assert not [d for d in everything.values() if d["status"] == "ready" and not d["assignable"]]
    assert set(listing(client, status="not_assignable")) == \
        {a for a, d in everything.items() if not d["assignable"]}


def test_controller_round_trips_5_digit_domain_ids_on_every_endpoint(hgx_world):
    client = hgx_world
    shown = client.get("/v1/devices/hgx/10000:E1:00.0", headers=ADMIN)
    assert shown.status_code == 200
    drive = shown.get_json()
    assert (drive["id"], drive["status"]) == (VMD_DRIVE, "not_assignable")
    assert drive["upstream"] == ["0000:00:0e.0", "10000:e0:06.0"]
    renamed = client.patch(f"/v1/devices/hgx/{VMD_DRIVE}", headers=ADMIN, json={"name": "vmd-0"})
    assert renamed.status_code == 200 and renamed.get_json()["name"] == "vmd-0"
    kept = client.delete(f"/v1/devices/hgx/{VMD_DRIVE}", headers=ADMIN)
    assert kept.status_code == 409 and kept.get_json()["error"]["code"] == "device_not_unavailable"
    assert client.get("/v1/devices/hgx/100000000:e1:00.0", headers=ADMIN).status_code == 400
    # placement by id: the VMD drive is refused with its reason, the wide GPU is placed
    body = {"name": "wide", "vcpus": 1, "memory_mib": 64, "gpus": [{"id": VMD_DRIVE}]}
    explained = client.post("/v1/schedule/explain", headers=ADMIN, json=body)
    assert explained.status_code == 200, explained.get_json()
    assert explained.get_json()["rejected"] == {
        "hgx": [f"PCI device {VMD_DRIVE} not_assignable"]}
    refused = client.post("/v1/vms", headers=ADMIN, json=body)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["details"]["hosts"]["hgx"] == \
        [f"PCI device {VMD_DRIVE} not_assignable"]
    body["gpus"] = [{"id": WIDE_GPU}]
    explained = client.post("/v1/schedule/explain", headers=ADMIN, json=body)
    assert explained.status_code == 200 and explained.get_json()["candidates"], \
        explained.get_json()
    missing = client.delete(f"/v1/vms/nothing/devices/hgx/{WIDE_GPU}", headers=ADMIN)
    assert missing.status_code == 404, missing.get_json()
    # a VM placed with the wide-domain GPU, which is then detached and attached again
    body["start"] = False
    made = client.post("/v1/vms", headers=ADMIN, json=body)
    assert made.status_code == 201, made.get_json()
    assert listing(client)[WIDE_GPU]["vm"] == "wide"
    freed = client.delete(f"/v1/vms/wide/devices/hgx/{WIDE_GPU.upper()}", headers=ADMIN)
    assert freed.status_code == 200, freed.get_json()
    assert listing(client)[WIDE_GPU]["status"] == "ready"
    again = client.post("/v1/vms/wide/devices", headers=ADMIN,
                        json={"type": "pci", "id": WIDE_GPU})
    assert again.status_code == 200, again.get_json()
    assert (listing(client)[WIDE_GPU]["status"], listing(client)[WIDE_GPU]["vm"]) == \
        ("attached", "wide")


# --- the live host: this machine ------------------------------------------------------
def pci_function_of(sys_path):
    parts = [p for p in os.path.realpath(sys_path).split("/") if p.count(":") == 2 and "." in p]
    return parts[-1] if parts else None


def root_disk_function():
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if fields[4] == "/":
                return pci_function_of(f"/sys/dev/block/{fields[2]}")
    return None


def default_route_function():
    routes = subprocess.run(["ip", "-o", "route", "show", "default"], capture_output=True,
                            text=True).stdout.split()
    if "dev" not in routes:
        return None
    return pci_function_of(f"/sys/class/net/{routes[routes.index('dev') + 1]}/device")


@pytest.fixture
def live_agent(tmp_path, lv):  # noqa: F811
    config = agent_config(tmp_path, host={"sysfs_root": "/sys", "proc_root": "/proc"},
                          libvirt={"uri": URI, "storage_dir": str(tmp_path / "images"),
                                   "domain_prefix": RUN_PREFIX})
    app = create_app(config)
    try:
        yield app.test_client()
    finally:
        app.extensions["hostplane_agent"].close()


def test_this_machines_root_disk_and_management_nic_are_refused_with_their_reasons(
        live_agent, lv, prefix):  # noqa: F811
    disk, nic = root_disk_function(), default_route_function()
    if disk is None or nic is None:
        pytest.skip("this machine's root disk or default route is not on a PCI function")
    client = live_agent
    shown = client.get(f"/v1/devices/pci/{disk}", headers=AUTH).get_json()
    assert shown["host_use"] == "in_use" and shown["assignable"] is False
    assert "filesystem mounted at /" in shown["not_assignable_reason"]
    carried = client.get(f"/v1/devices/pci/{nic}", headers=AUTH).get_json()
    assert carried["host_use"] == "in_use"
    assert "network: default route on" in carried["not_assignable_reason"]
    vm = f"{prefix}-own"
    create_vm(client, vm)
    before = inactive_xml(lv, vm)
    for device_id, words in ((disk, "mounted at /"), (nic, "default route")):
        refused = attach(client, vm, device_id)
        assert refused.status_code == 409, refused.get_json()
        error = refused.get_json()["error"]
        assert error["code"] == "device_not_assignable" and words in error["details"]["reason"]
    assert inactive_xml(lv, vm) == before


def test_a_use_that_appears_after_the_scan_is_seen_at_the_next_read(tmp_path, monkeypatch):
    """Mounting a filesystem on a PCI disk of this machine is not possible in a test, so the
    host-use source is a list the test changes (the only fake here); the rest is real."""
    import agent.inventory.store as store
    monkeypatch.setattr(store, "HOST_USES_TTL_S", 0.0)
    tree = write_sysfs_tree(hgx_server(), tmp_path / "sys")
    uses = {}
    inventory = Inventory(SysfsTree(tree), type("NoUsb", (), {"all": lambda self: []})(),
                          SharedGeneration(None), ("virtio-pci",), host_uses=lambda: dict(uses))
    inventory.scan()
    generation = inventory.generation
    assert inventory.pci("0000:07:00.0")["assignable"] is True
    uses["0000:07:00.0"] = ["filesystem mounted at /boot on sdb1"]
    device = inventory.pci("0000:07:00.0")
    assert device["assignable"] is False and "/boot" in device["not_assignable_reason"]
    assert inventory.generation > generation


# --- migration 0004 on both databases ----------------------------------------------------
from tests.test_controller_support import (database_url, insert_device_row,  # noqa: E402,F401
                                           insert_host_row)


def test_migration_0004_adds_topology_columns_and_moves_unassignable_rows_off_ready(
        database_url):  # noqa: F811
    import sqlalchemy as sa
    from controller.db import upgrade
    upgrade(database_url, "0003")
    engine = sa.create_engine(database_url)
    now = "2026-12-04 00:00:00+00:00"
    with engine.begin() as db:
        insert_host_row(db, now)
        for device_id, assignable in (("0000:00:01.0", False), ("0000:3b:00.0", True)):
            insert_device_row(db, now, device_id, assignable=assignable)
    upgrade(database_url)
    with engine.begin() as db:
        rows = dict(db.execute(sa.text("SELECT id, status FROM devices")).all())
        columns = db.execute(sa.text("SELECT numa_node, upstream, link, not_assignable_reason "
                                     "FROM devices WHERE id = '0000:3b:00.0'")).one()
    engine.dispose()
    assert rows == {"0000:00:01.0": "not_assignable", "0000:3b:00.0": "ready"}
    assert columns[0] is None and columns[1] in ([], "[]") and columns[3] is None
