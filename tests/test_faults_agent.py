"""Fault injection on the agent (issue 8): SIGKILL in the middle of a network apply.

A real agent under gunicorn (2 workers) builds a VXLAN network in a network namespace
of its own: a VXLAN device, a bridge, the device enslaved, both set up, two flood
peers. A test hook (`HOSTPLANE_NET_TEST_PAUSE=created-bridge:...`) holds the apply just
after the bridge is created; the test checks the host is half-built there and SIGKILLs
master and workers. After a restart the network is either finished (the caller asked
for it) or, if the host no longer allows it, rolled back — never duplicated, never
leaked, and GET says what the kernel has. SIGKILL mid-attach is in
tests/test_virt_processes.py; a libvirtd connection cut under a running agent in
tests/test_virt_reconnect.py.
"""

import json
import threading

import pytest
from pyroute2 import IPRoute

from tests.conftest import TOKEN
from tests.test_net_host import links, make_ns, vxlan_facts  # noqa: F401
from tests.support import wait_for
from tests.test_virt_support import GunicornAgent, host_files

BODY = {"type": "vxlan", "vni": 5101, "local_ip": "192.0.2.1",
        "peers": ["192.0.2.2", "192.0.2.3"]}
BUILT = {"vx-5101", "br-vx-5101"}


@pytest.fixture
def ns(make_ns):  # noqa: F811
    """test_net_host's namespace (veth 'eth1' as the host's NIC), eth1 addressed as the VTEP."""
    name = make_ns()
    with IPRoute(netns=name, flags=0) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname="eth1")[0], address="192.0.2.1",
                 prefixlen=24)
    return name


def agent_toml(base, namespace):
    tree, proc = host_files(base)
    return (f'[server]\ntoken = "{TOKEN}"\n\n[libvirt]\nuri = "test:///default"\n'
            f'storage_dir = "{base / "images"}"\n\n'
            f'[host]\nid = "fault-host"\nsysfs_root = "{tree}"\nproc_root = "{proc}"\n'
            f'state_dir = "{base / "state"}"\nwatch_udev = false\n\n'
            f'[network]\nnetns = "{namespace}"\n')


def killed_after_the_bridge(tmp_path, namespace):
    """PUT the network on an agent paused after creating the bridge; SIGKILL it there."""
    agent = GunicornAgent(tmp_path, agent_toml(tmp_path, namespace),
                          env={"HOSTPLANE_NET_TEST_PAUSE": "created-bridge:120"})
    try:
        putter = threading.Thread(target=_quietly, args=(agent, "PUT", "/v1/networks/overlay"))
        putter.start()
        assert wait_for((tmp_path / "state" / "paused-created-bridge").exists, timeout=30)
        half = links(namespace)
        assert BUILT <= set(half)
        assert half["vx-5101"][2] is None and vxlan_facts(namespace, "vx-5101")["peers"] == []
    finally:
        agent.kill()
    putter.join(30)
    assert "overlay" not in _stored(tmp_path)
    assert (tmp_path / "state" / "networks.pending.json").exists()


def _quietly(agent, method, path):
    try:
        agent.call(method, path, json=BODY)
    except Exception:  # noqa: BLE001 - the agent is killed under this request on purpose
        pass


def _stored(base):
    path = base / "state" / "networks.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_sigkill_mid_network_apply_is_finished_at_restart_with_nothing_twice(tmp_path, ns):
    before = set(links(ns))
    killed_after_the_bridge(tmp_path, ns)

    agent = GunicornAgent(tmp_path, agent_toml(tmp_path, ns))
    try:
        now = links(ns)
        assert set(now) == before | BUILT              # one of each, nothing leaked
        assert now["vx-5101"][2] == "br-vx-5101" and now["vx-5101"][4] and now["br-vx-5101"][4]
        assert vxlan_facts(ns, "vx-5101")["peers"] == BODY["peers"]
        view = agent.call("GET", "/v1/networks/overlay").json()
        assert (view["status"], view["bridge"]) == ("ok", "br-vx-5101")
        assert sorted(i["ifname"] for i in view["interfaces"]) == sorted(BUILT)
        assert _stored(tmp_path)["overlay"]["vni"] == 5101
        assert not (tmp_path / "state" / "networks.pending.json").exists()

        again = agent.call("PUT", "/v1/networks/overlay", json=BODY)
        assert (again.status_code, again.json()["changes"]) == (200, [])
        assert set(links(ns)) == before | BUILT
    finally:
        agent.stop()


def test_sigkill_mid_apply_the_host_no_longer_allows_is_rolled_back(tmp_path, ns):
    before = set(links(ns))
    killed_after_the_bridge(tmp_path, ns)
    with IPRoute(netns=ns, flags=0) as ipr:        # the VTEP address went away meanwhile
        ipr.addr("del", index=ipr.link_lookup(ifname="eth1")[0], address="192.0.2.1",
                 prefixlen=24)

    agent = GunicornAgent(tmp_path, agent_toml(tmp_path, ns))
    try:
        assert set(links(ns)) == before                # what the dead apply built is gone
        assert agent.call("GET", "/v1/networks/overlay").status_code == 404
        assert agent.call("GET", "/v1/networks").json()["networks"] == []
        assert "overlay" not in _stored(tmp_path)
        assert not (tmp_path / "state" / "networks.pending.json").exists()
    finally:
        agent.stop()
