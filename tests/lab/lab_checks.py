"""What the lab e2e test reads from the nodes and agents to judge the controller.

Why: the controller's answers are checked against the truth on the node (its
sysfs, libvirt's domain XML through the agent, ping between bridges), never
against numbers written into the test.
"""
import os
import threading
import time

import requests

import deploy

QEMU_STORAGE = ("46f4", "0001")   # QEMU USB HARDDRIVE


def wait_for(predicate, timeout=20, step=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def first_seen(probes, since, timeout=60, step=0.02):
    """{name: seconds after `since` when probe() first said yes}, each probe in
    its own thread so a slow one (an agent under TCG) does not delay the
    others' readings; a probe that raises counts as "not yet"."""
    seen = {}

    def watch(name, probe):
        while time.monotonic() - since < timeout:
            try:
                if probe():
                    seen[name] = time.monotonic() - since
                    return
            except requests.RequestException:
                pass
            time.sleep(step)

    threads = [threading.Thread(target=watch, args=item, daemon=True)
               for item in probes.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


def usb_id(serial):
    return f"{QEMU_STORAGE[0]}:{QEMU_STORAGE[1]}:{serial}"


def agent_token(workdir, host):
    """The token the role generated for a host (Ansible password lookup file)."""
    with open(os.path.join(workdir, "credentials", host, "agent_token")) as f:
        return f.read().split()[0]


class AgentClient:
    """An agent's API as the controller reaches it (hostfwd on 127.0.0.1, HTTPS
    verified against the cluster CA)."""

    def __init__(self, url, token, ca):
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.verify, self.session.trust_env = ca, False   # CA only

    def call(self, method, path, **kw):
        kw.setdefault("timeout", 60)
        return self.session.request(method, self.url + path, **kw)

    def has_usb(self, device_id):
        try:
            answer = self.call("GET", "/v1/devices", timeout=5)
        except requests.RequestException:
            return False
        return answer.ok and any(d["id"] == device_id
                                 for d in answer.json()["usb"])

    def vm_device_ids(self, name):
        answer = self.call("GET", f"/v1/vms/{name}")
        assert answer.status_code == 200, answer.text
        return {d["id"] for d in answer.json()["devices"]}


def host_pci_facts(lab, n):
    """{address: iommu group} as the node's own sysfs says."""
    out = lab.ssh(n, "for d in /sys/bus/pci/devices/*; do "
                     "g=$(readlink $d/iommu_group); "
                     "echo ${d##*/} ${g##*/}; done").stdout
    facts = {}
    for line in out.splitlines():
        address, _, group = line.partition(" ")
        facts[address] = int(group) if group else None
    return facts


def assert_attached_kept(env, vm, before_ctl, before_agent):
    """After an agent restart: the controller and libvirt hold what they held."""
    after_ctl = {(d["id"], d["status"]) for d in
                 env.ctl.get(f"/v1/vms/{vm}")["devices"]}
    assert after_ctl == before_ctl
    assert env.agent(0).vm_device_ids(vm) == before_agent
    for device_id, status in before_ctl:
        if status == "attached":
            device = env.ctl.get(f"/v1/devices/{deploy.host_id(0)}/{device_id}")
            assert (device["status"], device["vm"]) == ("attached", vm)


def create_network(env, body):
    """POST a network for the lab cluster to the controller (the operator's
    path), after deleting one of that name an attach-mode rerun left."""
    env.ctl.call("DELETE", f"/v1/networks/{body['name']}")
    env.ctl.call("POST", "/v1/networks", expect=201,
                 json=dict(body, clusters=[deploy.CLUSTER]))


def build_network(env, body):
    """Create a pushed network; {n: bridge} as the controller reports each
    host's applied state."""
    create_network(env, body)
    hosts = env.ctl.get(f"/v1/networks/{body['name']}")["hosts"]
    bridges = {}
    for n in (0, 1):
        state = hosts[deploy.host_id(n)]
        assert state["status"] == "applied" and state["bridge"], (body["name"], state)
        bridges[n] = state["bridge"]
    return bridges


def ping_between(env, bridges, prefix):
    """Address each bridge in prefix.0/24 and ping node1's from node0."""
    for n, bridge in bridges.items():
        env.lab.ssh(n, f"ip addr replace {prefix}.{n + 1}/24 dev {bridge} "
                       f"&& ip link set {bridge} up")
    ping = env.lab.ssh(0, f"ping -c 3 -W 2 -I {bridges[0]} {prefix}.2",
                       check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
