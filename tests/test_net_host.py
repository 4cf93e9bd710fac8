"""Host networks built for real through the agent's HTTP API, inside throwaway namespaces.

Each test makes its own network namespaces (`hpt-<random>`) with veth pairs standing in
for physical NICs, points an agent at one with `[network] netns`, and removes the
namespaces (and everything in them) afterwards. Needs root, like CI.
"""

import json
import os
import subprocess
import uuid

import pytest
from pyroute2 import IPRoute, netns

from agent.app import create_app
from tests.conftest import AUTH, agent_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture
def make_ns():
    """Creates namespaces on demand; each gets a veth 'eth1' (peer 'eth1-wire') inside it."""
    made = []

    def make():
        name = f"hpt-{uuid.uuid4().hex[:8]}"
        netns.create(name)
        made.append(name)
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("add", ifname="eth1", kind="veth", peer="eth1-wire")
            for ifname in ("lo", "eth1", "eth1-wire"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        return name

    yield make
    for name in made:
        netns.remove(name)


@pytest.fixture
def agents(tmp_path):
    """Starts agents (Flask test clients) pointed at a namespace; closes them afterwards."""
    apps = []

    def start(ns, state="state"):
        config = agent_config(tmp_path, network={"netns": ns},
                              libvirt={"uri": "test:///default"})
        config["host"]["state_dir"] = str(tmp_path / state)
        app = create_app(config)
        apps.append(app)
        return app.test_client()

    yield start
    for app in apps:
        app.extensions["hostplane_agent"].close()


def links(ns):
    """{ifname: (kind, alias, master name, mtu, up)} of every link in `ns`."""
    with IPRoute(netns=ns, flags=0) as ipr:
        found = ipr.get_links()
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in found}
    table = {}
    for link in found:
        info = link.get_attr("IFLA_LINKINFO")
        table[link.get_attr("IFLA_IFNAME")] = (
            info.get_attr("IFLA_INFO_KIND") if info else None, link.get_attr("IFLA_IFALIAS"),
            names.get(link.get_attr("IFLA_MASTER")), link.get_attr("IFLA_MTU"),
            bool(link["flags"] & 1))
    return table


def vxlan_facts(ns, ifname):
    with IPRoute(netns=ns, flags=0) as ipr:
        link = ipr.link("get", ifname=ifname)[0]
        data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        peers = sorted(entry.get_attr("NDA_DST") for entry in ipr.fdb("dump", ifindex=link["index"])
                       if entry.get_attr("NDA_LLADDR") == "00:00:00:00:00:00")
        return {"index": link["index"], "vni": data.get_attr("IFLA_VXLAN_ID"),
                "learning": data.get_attr("IFLA_VXLAN_LEARNING"),
                "port": data.get_attr("IFLA_VXLAN_PORT"), "mtu": link.get_attr("IFLA_MTU"),
                "peers": peers}


def assert_nothing_built(client, ns, before):
    """The links are as they were and the agent desires no network."""
    assert links(ns) == before
    assert client.get("/v1/networks", headers=AUTH).get_json()["networks"] == []


def put(client, name, body):
    return client.put(f"/v1/networks/{name}", headers=AUTH, json=body)


def test_novlan_bridge_enslaves_the_nic_and_reapplying_changes_nothing(make_ns, agents):
    ns = make_ns()
    client = agents(ns)
    first = put(client, "public", {"type": "novlan", "interface": "eth1"})
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["bridge"] == "br-eth1"
    built = links(ns)
    assert built["br-eth1"][:2] == ("bridge", "hostplane:net=public") and built["br-eth1"][4]
    assert built["eth1"][2] == "br-eth1"            # the NIC is the bridge's port
    assert built["eth1"][1] is None                 # the NIC itself is not ours: no alias

    again = put(client, "public", {"type": "novlan", "interface": "eth1"})
    assert again.status_code == 200 and again.get_json()["changes"] == []
    assert links(ns) == built

    listed = client.get("/v1/networks", headers=AUTH).get_json()["networks"]
    assert [(n["name"], n["status"], n["bridge"]) for n in listed] == [("public", "ok", "br-eth1")]


def test_delete_removes_exactly_what_was_built(make_ns, agents):
    ns = make_ns()
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname="br-mine", kind="bridge")   # an operator's own bridge
    before = links(ns)
    client = agents(ns)
    assert put(client, "public", {"type": "novlan", "interface": "eth1"}).status_code == 201
    answer = client.delete("/v1/networks/public", headers=AUTH)
    assert answer.status_code == 200 and answer.get_json()["removed"] == ["br-eth1"]
    assert links(ns) == before                      # br-mine kept, eth1 free again
    assert client.delete("/v1/networks/public", headers=AUTH).status_code == 404
    assert client.get("/v1/networks", headers=AUTH).get_json()["networks"] == []


def test_a_same_named_interface_not_built_by_the_agent_is_409_and_untouched(make_ns, agents,
                                                                            tmp_path):
    ns = make_ns()
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname="br-eth1", kind="bridge", mtu=1400)
    before = links(ns)
    client = agents(ns)
    answer = put(client, "public", {"type": "novlan", "interface": "eth1"})
    assert answer.status_code == 409
    error = answer.get_json()["error"]
    assert error["code"] == "interface_not_ours" and "br-eth1" in error["message"]
    assert links(ns) == before
    assert client.delete("/v1/networks/public", headers=AUTH).status_code == 404
    assert links(ns) == before                      # DELETE does not touch it either


def test_a_nic_already_in_another_bridge_is_409(make_ns, agents):
    ns = make_ns()
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname="eth1")[0],
                 master=ipr.link_lookup(ifname="br0")[0])
    before = links(ns)
    answer = put(agents(ns), "public", {"type": "novlan", "interface": "eth1"})
    assert answer.status_code == 409 and answer.get_json()["error"]["details"]["master"] == "br0"
    assert links(ns) == before


def _underlay(ns_a, ns_b):
    """A veth 'uplink' between the two namespaces, 192.0.2.1/24 in A and 192.0.2.2/24 in B."""
    with IPRoute(netns=ns_a, flags=0) as ipr:
        ipr.link("add", ifname="uplink", kind="veth", peer="uplink-b")
        ipr.link("set", index=ipr.link_lookup(ifname="uplink-b")[0], net_ns_fd=ns_b)
        index = ipr.link_lookup(ifname="uplink")[0]
        ipr.addr("add", index=index, address="192.0.2.1", prefixlen=24)
        ipr.link("set", index=index, state="up")
    with IPRoute(netns=ns_b, flags=0) as ipr:
        index = ipr.link_lookup(ifname="uplink-b")[0]
        ipr.link("set", index=index, ifname="uplink")
        ipr.addr("add", index=index, address="192.0.2.2", prefixlen=24)
        ipr.link("set", index=index, state="up")


def _address(ns, ifname, address):
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=address, prefixlen=24)


def _ping(ns, address):
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "2", "-i", "0.3",
                           address], capture_output=True, text=True, timeout=30)


def test_vxlan_joins_two_hosts_and_a_ping_crosses_the_bridges(make_ns, agents):
    host_a, host_b = make_ns(), make_ns()
    _underlay(host_a, host_b)
    agent_a, agent_b = agents(host_a, "state-a"), agents(host_b, "state-b")
    body_a = {"type": "vxlan", "vni": 5001, "local_cidr": "192.0.2.0/24", "peers": ["192.0.2.2"]}
    body_b = {"type": "vxlan", "vni": 5001, "local_ip": "192.0.2.2", "peers": ["192.0.2.1"]}
    answer = put(agent_a, "overlay", body_a)
    assert answer.status_code == 201, answer.get_json()
    assert answer.get_json()["bridge"] == "br-vx-5001"
    assert put(agent_b, "overlay", body_b).status_code == 201

    facts = vxlan_facts(host_a, "vx-5001")
    assert facts["vni"] == 5001 and facts["port"] == 4789 and facts["learning"] == 0
    assert facts["mtu"] == 1500 - 50 and facts["peers"] == ["192.0.2.2"]
    assert links(host_a)["vx-5001"][2] == "br-vx-5001"
    assert links(host_a)["br-vx-5001"][3] == 1450

    _address(host_a, "br-vx-5001", "198.51.100.1")
    _address(host_b, "br-vx-5001", "198.51.100.2")
    result = _ping(host_a, "198.51.100.2")
    assert result.returncode == 0, result.stdout + result.stderr

    # Re-apply: nothing changes. New peers: only the FDB changes, the device stays.
    assert put(agent_a, "overlay", body_a).get_json()["changes"] == []
    more = put(agent_a, "overlay", {**body_a, "peers": ["192.0.2.2", "192.0.2.9"]})
    assert more.status_code == 200 and more.get_json()["peers"] == ["192.0.2.2", "192.0.2.9"]
    assert vxlan_facts(host_a, "vx-5001")["peers"] == ["192.0.2.2", "192.0.2.9"]
    listed = agent_a.get("/v1/networks", headers=AUTH).get_json()["networks"]
    assert [n["peers"] for n in listed] == [["192.0.2.2", "192.0.2.9"]]
    put(agent_a, "overlay", body_a)
    assert vxlan_facts(host_a, "vx-5001")["peers"] == ["192.0.2.2"]
    smaller = put(agent_a, "overlay", {**body_a, "mtu": 1400})
    assert smaller.status_code == 200
    assert vxlan_facts(host_a, "vx-5001")["index"] == facts["index"]   # changed in place
    assert vxlan_facts(host_a, "vx-5001")["mtu"] == 1400 == links(host_a)["br-vx-5001"][3]
    assert _ping(host_a, "198.51.100.2").returncode == 0


def _kernel_builds_vlans(ns):
    with IPRoute(netns=ns, flags=0) as ipr:
        try:
            ipr.link("add", ifname="probe.9", kind="vlan", vlan_id=9,
                     link=ipr.link_lookup(ifname="eth1-wire")[0])
        except Exception:  # noqa: BLE001 - any refusal means "no VLANs here"
            return False
        ipr.link("del", ifname="probe.9")
        return True


def test_vlan_network_without_8021q_is_a_501_naming_the_module(make_ns, agents, tmp_path):
    """On this kernel (no 8021q) the real refusal; where VLANs exist, the real build."""
    ns = make_ns()
    before = links(ns)
    client = agents(ns)
    answer = put(client, "prod", {"type": "vlan", "interface": "eth1", "vlan": 100})
    if _kernel_builds_vlans(ns):
        assert answer.status_code == 201, answer.get_json()
        assert links(ns)["eth1.100"][2] == "br-eth1-100"
        return
    assert answer.status_code == 501, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "kernel_module_missing" and error["details"]["module"] == "8021q"
    assert "8021q" in error["message"]
    assert_nothing_built(client, ns, before)


@pytest.mark.parametrize("body, reason", [
    ({"type": "vlan", "interface": "eth1", "vlan": 0}, "vlan must be 1-4094"),
    ({"type": "vlan", "interface": "eth1", "vlan": 4095}, "vlan must be 1-4094"),
    ({"type": "vxlan", "vni": 0, "local_cidr": "10.0.0.0/8"}, "vni must be 1-16777214"),
    ({"type": "vxlan", "vni": 16777215, "local_cidr": "10.0.0.0/8"}, "vni must be 1-16777214"),
    ({"type": "novlan", "interface": "eth9"}, "interface eth9 does not exist"),
    ({"type": "novlan", "interface": "eth1-much-longer"}, "longer than 15 characters"),
    ({"type": "vxlan", "vni": 7, "local_cidr": "10.99.0.0/16"}, "no address of this host falls"),
    ({"type": "vxlan", "vni": 7, "local_ip": "10.99.0.1"}, "is not an address of this host"),
])
def test_bad_input_is_400_with_the_reason_and_creates_nothing(make_ns, agents, body, reason):
    ns = make_ns()
    before = links(ns)
    client = agents(ns)
    answer = put(client, "bad", body)
    assert answer.status_code == 400, answer.get_json()
    assert reason in answer.get_json()["error"]["message"]
    assert_nothing_built(client, ns, before)


def test_kernel_refusals_a_caller_causes_are_4xx_and_roll_back(make_ns, agents):
    ns = make_ns()
    _address(ns, "eth1", "192.0.2.1")
    before = links(ns)
    client = agents(ns)
    too_big = put(client, "jumbo", {"type": "vxlan", "vni": 9, "local_ip": "192.0.2.1",
                                    "mtu": 9000})          # the underlay carries 1500
    assert too_big.status_code == 400 and too_big.get_json()["error"]["code"] == "invalid_mtu"
    loopback = put(client, "loop", {"type": "novlan", "interface": "lo"})
    assert loopback.status_code == 409, loopback.get_json()
    assert loopback.get_json()["error"]["code"] == "cannot_enslave"
    assert_nothing_built(client, ns, before)


def test_a_changed_vni_replaces_the_old_interfaces(make_ns, agents):
    ns = make_ns()
    _address(ns, "eth1", "192.0.2.1")
    client = agents(ns)
    body = {"type": "vxlan", "vni": 5001, "local_ip": "192.0.2.1"}
    assert put(client, "overlay", body).status_code == 201
    moved = put(client, "overlay", {**body, "vni": 5002})
    assert moved.status_code == 200 and moved.get_json()["bridge"] == "br-vx-5002"
    ours = {name for name, facts in links(ns).items() if facts[1] == "hostplane:net=overlay"}
    assert ours == {"vx-5002", "br-vx-5002"}


def test_bad_network_names_and_missing_token_change_nothing(make_ns, agents):
    ns = make_ns()
    before = links(ns)
    client = agents(ns)
    body = {"type": "novlan", "interface": "eth1"}
    assert put(client, "x" * 64, body).status_code == 400
    assert put(client, "-dash", body).status_code == 400
    assert client.put("/v1/networks/public", json=body).status_code == 401
    assert links(ns) == before


def test_agent_start_rebuilds_the_desired_set_and_reports_orphans(make_ns, agents, tmp_path):
    ns = make_ns()
    client = agents(ns)
    assert put(client, "public", {"type": "novlan", "interface": "eth1"}).status_code == 201
    client.application.extensions["hostplane_agent"].close()
    stored = json.loads((tmp_path / "state" / "networks.json").read_text())
    assert stored == {"public": {"type": "novlan", "interface": "eth1"}}
    with IPRoute(netns=ns, flags=0) as ipr:           # a reboot wipes bridges
        ipr.link("del", ifname="br-eth1")
        ipr.link("add", ifname="br-gone", kind="bridge")  # ours, no longer desired
        ipr.link("set", ifname="br-gone", ifalias="hostplane:net=gone")
    restarted = agents(ns)
    rebuilt = links(ns)
    assert rebuilt["br-eth1"][1] == "hostplane:net=public" and rebuilt["eth1"][2] == "br-eth1"
    listed = {n["name"]: n["status"] for n in
              restarted.get("/v1/networks", headers=AUTH).get_json()["networks"]}
    assert listed == {"public": "ok", "gone": "orphaned"}
    assert "br-gone" in links(ns)                     # reported, not deleted


def test_a_configured_namespace_that_does_not_exist_is_503_and_not_created(agents):
    missing = f"hpt-{uuid.uuid4().hex[:8]}"
    client = agents(missing)
    answer = put(client, "public", {"type": "novlan", "interface": "eth1"})
    assert answer.status_code == 503 and answer.get_json()["error"]["code"] == "netns_missing"
    assert missing not in netns.listnetns()
