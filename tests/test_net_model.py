"""The pure network model: validation, derived names, VTEP choice, and the plan.

No kernel here. The VLAN tests check the exact netlink request the agent would send,
because this machine's kernel has no 8021q; real VLAN links are built in the lab issue's
emulated node, and tests/test_net_host.py checks the refusal this kernel gives.
"""

import pytest
from pydantic import ValidationError

from agent.net.netlink import add_request
from hostplane.core.networks import (IFNAMSIZ, HostAddress, InvalidNetwork, bridge_name,
                                     choose_vtep, parse_spec, peer_changes, plan_network,
                                     vlan_ifname)


def test_names_are_the_readable_ones_when_they_fit():
    assert bridge_name(parse_spec({"type": "novlan", "interface": "eth1"})) == "br-eth1"
    vlan = plan_network("prod", parse_spec({"type": "vlan", "interface": "eth1", "vlan": 100}))
    assert [link.ifname for link in vlan.built] == ["eth1.100", "br-eth1-100"]
    vxlan = plan_network("overlay", parse_spec({"type": "vxlan", "vni": 16777214,
                                                "local_ip": "10.0.0.5"}),
                         HostAddress("eth0", "10.0.0.5", 24, 1500))
    assert [link.ifname for link in vxlan.built] == ["vx-16777214", "br-vx-16777214"]


def test_long_names_are_hashed_to_fit_and_are_the_same_on_every_host():
    long_nic = "enp129s0f1np1"  # 13 characters: "br-" + it, or it + ".4094", is too long
    first = plan_network("a", parse_spec({"type": "vlan", "interface": long_nic, "vlan": 4094}))
    again = plan_network("b", parse_spec({"type": "vlan", "interface": long_nic, "vlan": 4094}))
    other = plan_network("c", parse_spec({"type": "vlan", "interface": long_nic, "vlan": 4093}))
    names = [link.ifname for link in first.built]
    assert names == [link.ifname for link in again.built]
    assert all(len(name) <= IFNAMSIZ for name in names)
    assert names[0].startswith("v4094-") and names[1].startswith("br-")
    assert set(names).isdisjoint(link.ifname for link in other.built)
    assert vlan_ifname("eth1", 7) == "eth1.7"


@pytest.mark.parametrize("body, reason", [
    ({"type": "vlan", "interface": "eth1", "vlan": 0}, "vlan must be 1-4094 (got 0)"),
    ({"type": "vlan", "interface": "eth1", "vlan": 4095}, "vlan must be 1-4094 (got 4095)"),
    ({"type": "vxlan", "vni": 0, "local_ip": "10.0.0.5"}, "vni must be 1-16777214 (got 0)"),
    ({"type": "vxlan", "vni": 16777215, "local_ip": "10.0.0.5"}, "vni must be 1-16777214"),
    ({"type": "novlan", "interface": "a-sixteen-chars!"}, "longer than 15 characters"),
    ({"type": "novlan", "interface": "eth 1"}, "may hold only letters"),
    ({"type": "vxlan", "vni": 5, "local_ip": "10.0.0.5", "local_cidr": "10.0.0.0/8"},
     "exactly one of local_cidr or local_ip"),
    ({"type": "vxlan", "vni": 5}, "exactly one of local_cidr or local_ip"),
    ({"type": "vxlan", "vni": 5, "local_ip": "10.0.0.5", "peers": ["10.0.0.300"]},
     "not an IP address"),
    ({"type": "vxlan", "vni": 5, "local_ip": "10.0.0.5", "port": 0}, "port must be 1-65535"),
    ({"type": "vxlan", "vni": 5, "local_cidr": "10.0.0.0/8", "peers": ["2001:db8::1"]},
     "peers must be IPv4 addresses"),
    ({"type": "vxlan", "vni": 5, "local_ip": "10.0.0.5", "peers": ["10.0.0.5"]},
     "cannot also be a peer"),
    ({"type": "novlan", "interface": "eth1", "mtu": 40}, "mtu must be 68-65535"),
    ({"type": "vlan", "interface": "eth1", "vlan": "100"}, "valid integer"),
    ({"type": "bond", "interface": "eth1"}, "'novlan', 'vlan', 'vxlan'"),
    ({"type": "novlan", "interface": "eth1", "bridge": "x"}, "Extra inputs"),
])
def test_bad_desired_states_are_refused_with_the_reason(body, reason):
    with pytest.raises(ValidationError) as caught:
        parse_spec(body)
    assert reason in str(caught.value)


def test_vtep_is_the_host_address_inside_local_cidr():
    addresses = [HostAddress("lo", "127.0.0.1", 8, 65536),
                 HostAddress("eth0", "192.168.1.4", 24, 1500),
                 HostAddress("eth2", "10.20.0.7", 16, 9000)]
    spec = parse_spec({"type": "vxlan", "vni": 5001, "local_cidr": "10.0.0.0/8"})
    vtep = choose_vtep(spec, addresses)
    assert (vtep.ifname, vtep.address) == ("eth2", "10.20.0.7")
    plan = plan_network("overlay", spec, vtep)
    assert plan.lowers[0].mtu == plan.bridge.mtu == 9000 - 50
    assert plan.lowers[0].lower == "eth2"


def test_no_vtep_when_nothing_matches():
    addresses = [HostAddress("eth0", "192.168.1.4", 24, 1500)]
    with pytest.raises(InvalidNetwork, match="no address of this host falls in local_cidr"):
        choose_vtep(parse_spec({"type": "vxlan", "vni": 1, "local_cidr": "10.0.0.0/8"}),
                    addresses)
    with pytest.raises(InvalidNetwork, match="local_ip 10.0.0.5 is not an address"):
        choose_vtep(parse_spec({"type": "vxlan", "vni": 1, "local_ip": "10.0.0.5"}), addresses)


def test_explicit_mtu_wins_over_the_underlay_rule():
    spec = parse_spec({"type": "vxlan", "vni": 9, "local_ip": "10.0.0.5", "mtu": 1400})
    plan = plan_network("n", spec, HostAddress("eth0", "10.0.0.5", 24, 9000))
    assert plan.lowers[0].mtu == 1400


def test_vlan_request_is_an_8021q_link_on_the_nic():
    """What the agent sends the kernel for a VLAN network (checked without a kernel here)."""
    plan = plan_network("prod", parse_spec({"type": "vlan", "interface": "eth1", "vlan": 100,
                                            "mtu": 1400}))
    sub, bridge = plan.built
    index_of = {"eth1": 7}.__getitem__
    assert add_request(sub, index_of) == {"ifname": "eth1.100", "kind": "vlan", "vlan_id": 100,
                                          "mtu": 1400, "link": 7}
    assert add_request(bridge, index_of) == {"ifname": "br-eth1-100", "kind": "bridge",
                                             "mtu": 1400}
    assert plan.ports == ("eth1.100",) and plan.alias == "hostplane:net=prod"


def test_vxlan_request_turns_learning_off_and_binds_the_underlay():
    spec = parse_spec({"type": "vxlan", "vni": 5001, "local_cidr": "192.0.2.0/24",
                       "peers": ["192.0.2.2"]})
    plan = plan_network("overlay", spec, HostAddress("uplink", "192.0.2.1", 24, 1500))
    assert add_request(plan.lowers[0], {"uplink": 3}.__getitem__) == {
        "ifname": "vx-5001", "kind": "vxlan", "vxlan_id": 5001, "vxlan_local": "192.0.2.1",
        "vxlan_port": 4789, "vxlan_learning": 0, "mtu": 1450, "vxlan_link": 3}
    assert plan.peers == ("192.0.2.2",)


def test_peer_changes_add_the_new_and_remove_the_gone():
    assert peer_changes(["10.0.0.2", "10.0.0.3"], ["10.0.0.3", "10.0.0.4"]) == (
        ["10.0.0.4"], ["10.0.0.2"])
    assert peer_changes(["10.0.0.2"], ["10.0.0.2"]) == ([], [])
