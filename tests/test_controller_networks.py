"""Controller L2 networks against two REAL agents, each building in its own network namespace.

The two namespaces (`hpt-<random>`, made by test_net_host's `make_ns`) stand in for two
hosts: each has a veth `eth1` (the NIC for novlan/vlan) and they are joined by a veth
underlay, 192.0.2.1 in A and 192.0.2.2 in B. Agents serve on loopback with
`[network] netns` pointing at them; the controller is the real app on SQLite. Needs root.
"""

import os
import subprocess
import sys
import threading

import pytest
from sqlalchemy import create_engine, inspect, text

from controller.db import upgrade
from tests.test_controller_support import (ADMIN, TENANT, LoopbackAgent, controller_app,
                                           controller_config, drop_postgres_database,
                                           gpu_host, postgres_database, register)
from tests.test_net_host import (_address, _kernel_builds_vlans, _ping, _underlay, links,
                                 make_ns, vxlan_facts)  # noqa: F401 - make_ns is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOL = {"name": "pool1", "type": "vxlan-pool", "vni_range": [5000, 5002],
        "local_cidr": "192.0.2.0/24", "clusters": ["lab"],
        "vteps": {"host-a": "192.0.2.1", "host-b": "192.0.2.2"}}


class NetnsAgent(LoopbackAgent):
    """A real agent on loopback whose networks are built inside `netns`."""

    def __init__(self, tmp_path, host_id, netns):
        self.netns = netns
        super().__init__(tmp_path, host_id, gpu_host())

    def config(self):
        config = super().config()
        config["network"]["netns"] = self.netns
        return config


@pytest.fixture
def world(request, tmp_path, make_ns):
    """(client, {host id: (agent, namespace)}, register(host id)); nothing registered yet.
    The controller's database is SQLite unless the test asks for "postgresql"."""
    database, url = None, None
    if getattr(request, "param", "sqlite") == "postgresql":
        database, url = postgres_database()
        request.addfinalizer(lambda: drop_postgres_database(database))
    spaces = {"host-a": make_ns(), "host-b": make_ns()}
    _underlay(spaces["host-a"], spaces["host-b"])
    agents = {host: NetnsAgent(tmp_path, host, ns) for host, ns in spaces.items()}
    app = controller_app(controller_config(tmp_path, url))
    client = app.test_client()
    try:
        yield client, {h: (agents[h], spaces[h]) for h in agents}, \
            lambda host: register(client, agents[host], cluster="lab")
    finally:
        for agent in agents.values():
            agent.stop()
        app.extensions["hostplane_controller"].close()


def create(client, body, headers=ADMIN):
    return client.post("/v1/networks", headers=headers, json=body)


def network(client, name):
    return client.get(f"/v1/networks/{name}", headers=ADMIN)


def names(client):
    listed = client.get("/v1/networks", headers=ADMIN).get_json()["networks"]
    return sorted(n["name"] for n in listed)


def ours(ns):
    """{ifname: alias} of the links hostplane built in `ns`."""
    return {ifname: facts[1] for ifname, facts in links(ns).items()
            if (facts[1] or "").startswith("hostplane:")}


def test_vxlan_network_joins_both_hosts_as_peers_and_a_ping_crosses(world):
    client, hosts, join = world
    join("host-a"), join("host-b")
    assert create(client, POOL).status_code == 201
    answer = create(client, {"name": "overlay", "type": "vxlan", "pool": "pool1"})
    assert answer.status_code == 201, answer.get_json()
    view = answer.get_json()
    assert view["vni"] == 5000 and view["clusters"] == ["lab"]     # first VNI, pool's clusters
    assert {h: (s["status"], s["bridge"], s["vtep"]) for h, s in view["hosts"].items()} == {
        "host-a": ("applied", "br-vx-5000", "192.0.2.1"),
        "host-b": ("applied", "br-vx-5000", "192.0.2.2")}
    (_, ns_a), (_, ns_b) = hosts["host-a"], hosts["host-b"]
    assert vxlan_facts(ns_a, "vx-5000")["peers"] == ["192.0.2.2"]
    assert vxlan_facts(ns_b, "vx-5000")["peers"] == ["192.0.2.1"]
    assert links(ns_a)["vx-5000"][2] == "br-vx-5000" == links(ns_b)["vx-5000"][2]

    _address(ns_a, "br-vx-5000", "198.51.100.1")
    _address(ns_b, "br-vx-5000", "198.51.100.2")
    result = _ping(ns_a, "198.51.100.2")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_host_joining_later_gets_the_networks_and_becomes_a_peer(world):
    client, hosts, join = world
    join("host-a")
    pool = {**POOL, "vteps": {}}           # VTEPs given later by PATCH
    assert create(client, pool).status_code == 201
    assert create(client, {"name": "overlay", "type": "vxlan", "pool": "pool1"}).status_code == 201
    assert create(client, {"name": "public", "type": "novlan", "interface": "eth1",
                           "clusters": ["lab"]}).status_code == 201
    status = network(client, "overlay").get_json()["hosts"]
    assert list(status) == ["host-a"] and status["host-a"]["vtep"] is None
    assert "no VTEP address known" in status["host-a"]["warning"]

    join("host-b")                          # registration resyncs: the poller hook pushes
    (_, ns_a), (_, ns_b) = hosts["host-a"], hosts["host-b"]
    assert set(ours(ns_b)) == {"vx-5000", "br-vx-5000", "br-eth1"}
    assert vxlan_facts(ns_a, "vx-5000")["peers"] == []          # no VTEPs known yet

    patched = client.patch("/v1/networks/pool1", headers=ADMIN,
                           json={"vteps": {"host-a": "192.0.2.1", "host-b": "192.0.2.2"}})
    assert patched.status_code == 200, patched.get_json()
    assert vxlan_facts(ns_a, "vx-5000")["peers"] == ["192.0.2.2"]
    assert vxlan_facts(ns_b, "vx-5000")["peers"] == ["192.0.2.1"]
    status = network(client, "overlay").get_json()["hosts"]
    assert {h: s["status"] for h, s in status.items()} == {"host-a": "applied",
                                                           "host-b": "applied"}
    outside = client.patch("/v1/networks/pool1", headers=ADMIN,
                           json={"vteps": {"host-a": "10.1.1.1"}})
    assert outside.status_code == 400 and "not inside 192.0.2.0/24" in \
        outside.get_json()["error"]["message"]


def test_novlan_is_pushed_to_both_hosts_and_delete_removes_it_from_both(world):
    client, hosts, join = world
    join("host-a"), join("host-b")
    before = {host: links(ns) for host, (_, ns) in hosts.items()}
    answer = create(client, {"name": "public", "type": "novlan", "interface": "eth1",
                             "clusters": ["lab"]})
    assert answer.status_code == 201, answer.get_json()
    assert {h: s["status"] for h, s in answer.get_json()["hosts"].items()} == {
        "host-a": "applied", "host-b": "applied"}
    for _, ns in hosts.values():
        assert ours(ns) == {"br-eth1": "hostplane:net=public"}
        assert links(ns)["eth1"][2] == "br-eth1"
    assert create(client, {"name": "public", "type": "novlan", "interface": "eth1",
                           "clusters": ["lab"]}).status_code == 409

    gone = client.delete("/v1/networks/public", headers=ADMIN)
    assert gone.status_code == 200
    assert gone.get_json()["hosts"] == {"host-a": "removed", "host-b": "removed"}
    for host, (_, ns) in hosts.items():
        assert links(ns) == before[host]
    assert network(client, "public").status_code == 404 and names(client) == []


def test_vni_allocation_is_sequential_reuses_the_lowest_and_refuses_a_full_pool(world):
    client, hosts, join = world
    join("host-a")
    assert create(client, {**POOL, "clusters": []}).status_code == 201
    vnis = [create(client, {"name": f"n{i}", "type": "vxlan", "pool": "pool1",
                            "clusters": ["lab"]}).get_json()["vni"] for i in range(3)]
    assert vnis == [5000, 5001, 5002]
    full = create(client, {"name": "n3", "type": "vxlan", "pool": "pool1", "clusters": ["lab"]})
    assert full.status_code == 409 and full.get_json()["error"]["code"] == "limit_reached"
    assert client.delete("/v1/networks/n1", headers=ADMIN).status_code == 200
    assert "vx-5001" not in links(hosts["host-a"][1])
    again = create(client, {"name": "n4", "type": "vxlan", "pool": "pool1", "clusters": ["lab"]})
    assert again.get_json()["vni"] == 5001
    assert "vx-5001" in links(hosts["host-a"][1])
    taken = create(client, {"name": "n5", "type": "vxlan", "pool": "pool1", "vni": 5002,
                            "clusters": ["lab"]})
    assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "vni_taken"
    busy = client.delete("/v1/networks/pool1", headers=ADMIN)
    assert busy.status_code == 409 and busy.get_json()["error"]["code"] == "pool_in_use"
    assert network(client, "pool1").get_json()["networks"] == {"n0": 5000, "n4": 5001,
                                                               "n2": 5002}
    overlap = create(client, {**POOL, "name": "pool2", "vni_range": [5002, 6000]})
    assert overlap.status_code == 409 and overlap.get_json()["error"]["code"] == \
        "vni_range_overlaps"


@pytest.mark.parametrize("world", ["sqlite", "postgresql"], indirect=True)
def test_concurrent_creates_get_distinct_vnis(world):
    """SQLite serialises by BEGIN IMMEDIATE, PostgreSQL by locking the pool row."""
    client, _hosts, join = world
    join("host-a")
    assert create(client, {**POOL, "vni_range": [7000, 7005]}).status_code == 201
    app = client.application
    answers = [None] * 8
    start = threading.Barrier(8)

    def make(i):
        start.wait()
        answers[i] = app.test_client().post("/v1/networks", headers=ADMIN, json={
            "name": f"race{i}", "type": "vxlan", "pool": "pool1"})

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = sorted(a.get_json()["vni"] for a in answers if a.status_code == 201)
    refused = [a.get_json()["error"]["code"] for a in answers if a.status_code != 201]
    assert made == list(range(7000, 7006)) and refused == ["limit_reached"] * 2


def test_vlan_status_shows_each_agents_kernel_module_missing(world):
    client, hosts, join = world
    join("host-a"), join("host-b")
    answer = create(client, {"name": "prod", "type": "vlan", "interface": "eth1", "vlan": 100,
                             "clusters": ["lab"]})
    assert answer.status_code == 201, answer.get_json()
    status = network(client, "prod").get_json()["hosts"]
    if _kernel_builds_vlans(hosts["host-a"][1]):
        assert {s["status"] for s in status.values()} == {"applied"}
        return
    for host in ("host-a", "host-b"):   # this kernel has no 8021q: the agents' real refusal
        assert status[host]["status"] == "failed"
        error = status[host]["error"]
        assert (error["status"], error["code"]) == (501, "kernel_module_missing")
        assert error["details"]["module"] == "8021q"
        assert ours(hosts[host][1]) == {}


def test_tenant_token_is_refused_and_changes_nothing(world):
    client, _hosts, join = world
    join("host-a")
    body = {"name": "public", "type": "novlan", "interface": "eth1", "clusters": ["lab"]}
    refused = create(client, body, headers=TENANT)
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "admin_only"
    assert names(client) == []
    assert create(client, body).status_code == 201
    assert client.delete("/v1/networks/public", headers=TENANT).status_code == 403
    assert names(client) == ["public"]
    assert client.post("/v1/networks", json=body).status_code == 401


BAD_INPUT = [
    ({"name": "-bad", "type": "novlan", "interface": "eth1", "clusters": ["lab"]}, "name"),
    ({"name": "x", "type": "bridge", "interface": "eth1", "clusters": ["lab"]}, "type"),
    ({"name": "x", "type": "novlan", "clusters": ["lab"]}, "interface"),
    ({"name": "x", "type": "novlan", "interface": "eth1-much-longer", "clusters": ["lab"]},
     "interface"),
    ({"name": "x", "type": "vlan", "interface": "eth1", "vlan": 4095, "clusters": ["lab"]},
     "vlan"),
    ({"name": "x", "type": "novlan", "interface": "eth1", "clusters": ["nowhere"]}, "clusters"),
    ({"name": "x", "type": "novlan", "interface": "eth1"}, "clusters"),
    ({"name": "x", "type": "novlan", "interface": "eth1", "clusters": ["lab"], "vni": 5},
     "vni"),
    ({**POOL, "name": "x", "vni_range": [10, 5]}, "vni_range"),
    ({**POOL, "name": "x", "vni_range": [0, 5]}, "vni_range"),
    ({**POOL, "name": "x", "local_cidr": "192.0.2.0/33"}, "local_cidr"),
    ({**POOL, "name": "x", "vteps": {"host-a": "10.0.0.1"}}, "vteps"),
    ({"name": "x", "type": "vxlan", "pool": "nopool", "clusters": ["lab"]}, "pool"),
    ({"name": "x", "type": "vxlan", "pool": "pool1", "vni": 9999}, "vni"),
    ({"name": "x", "type": "vxlan", "pool": "pool1", "mtu": 10}, "mtu"),
]


def test_bad_input_is_400_naming_the_field_and_stores_nothing(world):
    """One world for every case: each must leave the database and the host as they were."""
    client, hosts, join = world
    join("host-a")
    assert create(client, POOL).status_code == 201
    before = links(hosts["host-a"][1])
    for body, field in BAD_INPUT:
        answer = create(client, body)
        assert answer.status_code == 400, (body, answer.get_json())
        assert answer.get_json()["error"]["message"].startswith(f"{field}:"), \
            (body, answer.get_json())
        assert names(client) == ["pool1"] and links(hosts["host-a"][1]) == before, body


def test_db_upgrade_takes_a_0001_database_to_head(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    upgrade(url, "0001")
    done = subprocess.run([sys.executable, "-m", "controller.cli", "db", "upgrade"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOSTPLANE_CONTROLLER_CONFIG": "/nonexistent",
                               "HOSTPLANE_DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() \
            == _head_revision()
    assert {"networks", "network_hosts"} <= set(inspect(engine).get_table_names())
    assert "revision" in {c["name"] for c in inspect(engine).get_columns("hosts")}
    assert "moving_to" in {c["name"] for c in inspect(engine).get_columns("vms")}
    engine.dispose()


def _head_revision():
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    config = Config()
    config.set_main_option("script_location", os.path.join(ROOT, "controller", "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


def test_a_deleted_host_is_dropped_as_vxlan_peer_on_the_others(world):
    client, hosts, join = world
    join("host-a"), join("host-b")
    assert create(client, POOL).status_code == 201
    assert create(client, {"name": "overlay", "type": "vxlan", "pool": "pool1"}).status_code == 201
    (_, ns_a), (_, ns_b) = hosts["host-a"], hosts["host-b"]
    assert vxlan_facts(ns_a, "vx-5000")["peers"] == ["192.0.2.2"]
    assert client.delete("/v1/hosts/host-b", headers=ADMIN).status_code == 204
    assert vxlan_facts(ns_a, "vx-5000")["peers"] == []
    assert list(network(client, "overlay").get_json()["hosts"]) == ["host-a"]
    join("host-b")                          # back again: peers again, both ways
    assert vxlan_facts(ns_a, "vx-5000")["peers"] == ["192.0.2.2"]
    assert vxlan_facts(ns_b, "vx-5000")["peers"] == ["192.0.2.1"]


def test_a_host_moved_to_another_cluster_leaves_its_old_peers(world):
    client, hosts, join = world
    join("host-a"), join("host-b")
    assert create(client, POOL).status_code == 201
    assert create(client, {"name": "overlay", "type": "vxlan", "pool": "pool1"}).status_code == 201
    (_, ns_a), _ = hosts["host-a"], hosts["host-b"]
    assert client.patch("/v1/hosts/host-b", headers=ADMIN,
                        json={"cluster": "elsewhere"}).status_code == 200
    assert vxlan_facts(ns_a, "vx-5000")["peers"] == []
