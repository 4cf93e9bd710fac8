"""Any sequence of operator actions leaves the controller's claims and the agents' domains
in agreement (a stateful property test, Hypothesis' rule-based state machine).

The world is real: a controller on SQLite and two real agents (host-a with two T4 GPUs,
host-b with two A10s, a USB stick and a keyboard each; libvirt's test driver, one private
instance per agent). Hypothesis drives creates (GPUs by model and count or by address,
USB, a host asked or not, started or not), deletes, starts, stops, attaches and detaches
of GPUs and USB devices, device enable/disable and host maintenance/IOMMU switches, in
any order; and the hostile ones: a create and a delete of one name racing (threads), a
create whose agent answers only after the controller's timeout (the agent's host lock
held meanwhile), a poll whose answer was read before an operator's detach, delete, attach
or stop and is written after it, the poller settling what is left, and domains made on an agent behind
the controller's back (orphans), adopted or deleted by the admin. Every answer must be
2xx or a 4xx in the error envelope (a refusal), never a 5xx except the 503 of an agent
that did not answer in time. After every step, what an operator reads must agree:

- every device the controller calls attached belongs to exactly one VM that lists it,
  or to no VM and to an orphan domain that GET /v1/orphans lists; every device a VM
  lists is on that VM's host;
- each settled VM's domain on its host's agent holds exactly the devices the controller
  records, and every domain an agent has is a VM the controller lists there or an
  orphan (a VM still `creating` or `deleting` may or may not have its domain yet);
- no VM holds more USB devices than the per-VM limits, and a GPU's audio function is
  never split from its GPU.

CI runs 40 sequences of up to 25 steps, derandomized (the same ones each run, so a
failure there is a regression, never luck); a long random run, whose failing sequence
Hypothesis prints shrunk to its shortest:

    HOSTPLANE_STATEFUL_EXAMPLES=1000 .venv/bin/python -m pytest tests/test_controller_stateful.py -s
"""

import collections
import os
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.test_controller_support import ADMIN, stale_polls, two_host_world
from tests.test_faults_controller_support import agent_domains

NAMES = ("sm-1", "sm-2", "sm-3", "orph-1", "orph-2")
ORPHANS = ("orph-1", "orph-2", "sm-3")   # one of them clashes with a controller VM's name
BUSY = ("creating", "deleting", "moving")
MODELS = ({"vendor_id": "10de", "device_id": "1eb8"}, {"vendor_id": "10de", "device_id": "2236"})
HOSTS = ("host-a", "host-b")
USB_LIMITS = {"1": 1, "2": 6, "3": 4}


class _Answers:
    """The controller through its test client; every answer judged on the way, and
    counted by (method, route, status) in `seen`."""

    seen = collections.Counter()

    def __init__(self, client):
        self.client = client
        self.counting = True

    def __call__(self, method, path, body=None, allowed=(200, 201, 204), client=None):
        answer = (client or self.client).open(path, method=method, headers=ADMIN, json=body)
        status = answer.status_code
        if method != "GET" and self.counting:
            error = (answer.get_json() or {}).get("error", {}) if status >= 400 else {}
            self.seen[(method, _route(path), status, error.get("code"))] += 1
        late = status == 503 and answer.get_json()["error"]["details"].get("state") in BUSY
        assert status < 500 or late, (method, path, body, status, answer.get_json())
        if status >= 400:
            error = (answer.get_json() or {}).get("error", {})
            assert error.get("code") and error.get("message"), (method, path, answer.data)
        assert status in allowed or 400 <= status < 500 or late, (method, path, status)
        return status, answer.get_json()


class ClaimsAgree(RuleBasedStateMachine):
    world = None        # (client, agents, devices): set by the test before the run

    def __init__(self):
        super().__init__()
        self.client, self.agents, self.devices = self.world
        self.api = _Answers(self.client)
        self.vms = {}
        self._reset()

    def _reset(self):
        """Every sequence starts from the same world: no VM, no orphan, all enabled."""
        self.api.counting = False
        self._controller().poller.settle_operations(grace_s=0)
        for vm in self.api("GET", "/v1/vms")[1]["vms"]:
            self.api("DELETE", f"/v1/vms/{vm['name']}")
        for orphan in self.api("GET", "/v1/orphans")[1]["orphans"]:
            self.api("DELETE", f"/v1/orphans/{orphan['host_id']}/{orphan['name']}")
        for host_id in HOSTS:
            self.api("PATCH", f"/v1/hosts/{host_id}", {"state": "enabled",
                                                        "iommu_enabled": True})
        for host_id, device_id, _ in self.devices:
            self.api("PATCH", f"/v1/devices/{host_id}/{device_id}", {"state": "enabled"})
        self.api.counting = True

    # --- what an operator does ----------------------------------------------------------
    @rule(gpus=st.one_of(
              st.just([]),
              st.builds(lambda model, count: [dict(model, count=count)],
                        st.sampled_from(MODELS), st.sampled_from((1, 1, 2, 3)))),
          by_address=st.booleans(), usb=st.booleans(), data=st.data(),
          host=st.sampled_from((None,) + HOSTS), start=st.sampled_from((False, False, True)))
    def create(self, gpus, by_address, usb, data, host, start):
        name = self._name(data, existing=False)
        if by_address:
            gpus = [{"id": _pick(data, self._ids("gpu"))}]
        asks = [{"id": _pick(data, self._ids("usb"))}] if usb else []
        body = {"name": name, "vcpus": 1, "memory_mib": 128, "gpus": gpus, "usb": asks,
                "start": start}
        if host:
            body["host"] = host
        self.api("POST", "/v1/vms", body)

    @rule(data=st.data())
    def delete(self, data):
        self.api("DELETE", f"/v1/vms/{self._name(data)}")

    @rule(data=st.data(), action=st.sampled_from(("start", "stop")))
    def start_or_stop(self, data, action):
        self.api("POST", f"/v1/vms/{self._name(data)}/{action}",
                 {"force": True} if action == "stop" else None)

    @rule(data=st.data())
    def attach(self, data):
        name = self._name(data)
        home = self.vms.get(name, {}).get("host")
        local = [device for device in self.devices if device[0] == home]
        prefer_local = data.draw(st.booleans())
        host_id, device_id, kind = _pick(data, local if local and prefer_local
                                         else self.devices)
        self.api("POST", f"/v1/vms/{name}/devices",
                 {"type": "pci" if kind == "gpu" else "usb", "id": device_id})

    @rule(data=st.data())
    def detach(self, data):
        name = self._name(data)
        held = [(d["host_id"], d["id"]) for d in self.vms.get(name, {}).get("devices", [])]
        host_id, device_id = _pick(
            data, held or [(host_id, device_id) for host_id, device_id, _ in self.devices])
        self.api("DELETE", f"/v1/vms/{name}/devices/{host_id}/{device_id}")

    # --- what a hostile world does -----------------------------------------------------
    @rule(data=st.data(), host=st.sampled_from(HOSTS), pause=st.sampled_from((0, 0.005, 0.02)))
    def create_racing_delete(self, data, host, pause):
        """A create and a delete of one name at once, from two callers."""
        name = self._name(data, existing=False)
        body = {"name": name, "vcpus": 1, "memory_mib": 128, "host": host, "start": False,
                "gpus": [dict(MODELS[HOSTS.index(host)], count=1)]}
        app = self.client.application
        create = threading.Thread(target=self.api, args=("POST", "/v1/vms", body),
                                  kwargs={"client": app.test_client()})
        create.start()
        time.sleep(pause)
        self.api("DELETE", f"/v1/vms/{name}", client=app.test_client())
        create.join(timeout=60)

    @rule(data=st.data(), host=st.sampled_from(HOSTS))
    def create_answered_late(self, data, host):
        """The agent carries out the create only after the controller gave up waiting."""
        name = self._name(data, existing=False)
        config = self._controller().config["poll"]
        saved, config["timeout_s"] = config["timeout_s"], 0.05   # agent calls wait 0.3 s
        held = threading.Event()

        def hold_the_agent():
            with self.agents[host].agent.virt.lock.held():
                held.set()
                time.sleep(0.6)
        holder = threading.Thread(target=hold_the_agent)
        holder.start()
        held.wait(10)
        try:
            self.api("POST", "/v1/vms", {"name": name, "vcpus": 1, "memory_mib": 128,
                                         "host": host, "start": False,
                                         "gpus": [dict(MODELS[HOSTS.index(host)], count=1)]})
        finally:
            config["timeout_s"] = saved
            holder.join(timeout=60)

    @rule(data=st.data(), host=st.sampled_from(HOSTS),
          action=st.sampled_from(("detach", "delete", "attach", "stop")))
    def poll_answered_before_an_action(self, data, host, action):
        """The poller reads an agent's inventory, the operator acts, then the poller writes
        what it read: the claims stay the operator's (a detached GPU is not taken back)."""
        act = {"detach": lambda: self.detach(data), "delete": lambda: self.delete(data),
               "attach": lambda: self.attach(data),
               "stop": lambda: self.start_or_stop(data, "stop")}[action]
        with stale_polls(self.client.application, act) as watcher:
            watcher.fetch_now(host, background=False)

    @rule()
    def poller_settles(self):
        self._controller().poller.settle_operations(grace_s=0)

    @rule(name=st.sampled_from(ORPHANS), host=st.sampled_from(HOSTS), data=st.data())
    def domain_behind_the_controllers_back(self, name, host, data):
        gpus = [device_id for host_id, device_id, kind in self.devices
                if host_id == host and kind == "gpu"]
        from tests.conftest import AUTH
        self.agents[host].app.test_client().post("/v1/vms", headers=AUTH, json={
            "name": name, "vcpus": 1, "memory_mib": 64,
            "devices": [{"type": "pci", "id": data.draw(st.sampled_from(gpus))}]})
        self._controller().poller.fetch_now(host, background=False)

    @rule(data=st.data(), action=st.sampled_from(("adopt", "delete")))
    def orphan_adopted_or_deleted(self, data, action):
        orphans = self.api("GET", "/v1/orphans")[1]["orphans"]
        orphan = _pick(data, orphans)
        if orphan is None:
            return
        path = f"/v1/orphans/{orphan['host_id']}/{orphan['name']}"
        if action == "adopt":
            self.api("POST", path + "/adopt", {})
        else:
            self.api("DELETE", path)

    @rule(data=st.data(), action=st.sampled_from(("DELETE", "start", "stop", "devices")))
    def missing_vm(self, data, action):
        missing = [name for name in NAMES if name not in self.vms]
        name = _pick(data, missing)
        if name is None:
            return
        method, path, body = {
            "DELETE": ("DELETE", f"/v1/vms/{name}", None),
            "start": ("POST", f"/v1/vms/{name}/start", None),
            "stop": ("POST", f"/v1/vms/{name}/stop", {}),
            "devices": ("POST", f"/v1/vms/{name}/devices",
                        {"type": "usb", "id": self._ids("usb")[0]})}[action]
        status, body = self.api(method, path, body)
        assert status == 404 and body["error"]["code"] == "vm_not_found", (path, body)

    # sampled_from with repeats: mostly the state that lets placements through
    @rule(data=st.data(), state=st.sampled_from(("enabled", "enabled", "disabled")))
    def enable_or_disable(self, data, state):
        host_id, device_id, _ = data.draw(st.sampled_from(self.devices))
        self.api("PATCH", f"/v1/devices/{host_id}/{device_id}", {"state": state})

    @rule(host_id=st.sampled_from(HOSTS),
          state=st.sampled_from(("enabled", "enabled", "maintenance")),
          iommu=st.sampled_from((True, True, False)))
    def switch_host(self, host_id, state, iommu):
        self.api("PATCH", f"/v1/hosts/{host_id}", {"state": state, "iommu_enabled": iommu})

    # --- what must hold after every step ------------------------------------------------
    @invariant()
    def claims_and_domains_agree(self):
        vms = {vm["name"]: vm for vm in self.api("GET", "/v1/vms")[1]["vms"]}
        self.vms = vms
        devices = {(d["host_id"], d["id"]): d for d in
                   self.api("GET", "/v1/devices")[1]["devices"]}
        orphans = self.api("GET", "/v1/orphans")[1]
        assert not orphans["unreachable"], orphans
        orphaned = {(o["host_id"], o["name"]) for o in orphans["orphans"]}
        listed = {}
        for name, vm in vms.items():
            assert vm["state"] != "moving", vm
            for device in vm["devices"]:
                key = (device["host_id"], device["id"])
                assert key not in listed, f"{key} held by {listed.get(key)} and {name}"
                listed[key] = name
                assert device["host_id"] == vm["host"], (name, vm["host"], device)
                assert devices[key]["vm"] == name, (name, devices[key])
            _within_usb_limits(vm, devices)
            _audio_with_its_gpu(vm, devices)
        for key, device in devices.items():
            if device["status"] == "attached" and device["vm"] is not None:
                assert listed.get(key) == device["vm"], (key, device)
            elif device["status"] == "attached":   # never a VM name the API cannot show
                assert (key[0], device["orphan"]) in orphaned, (key, device, orphaned)
        for host_id, agent in self.agents.items():
            domains = agent_domains(_Local(agent))
            on_host = {name: vm for name, vm in vms.items() if vm["host"] == host_id}
            for name, (_, held) in domains.items():
                if (host_id, name) in orphaned:
                    continue
                assert name in on_host, (host_id, name, "neither a VM nor an orphan")
                if on_host[name]["state"] in BUSY:
                    continue
                assert held == sorted(d["id"] for d in on_host[name]["devices"]), (
                    host_id, name, held, on_host[name]["devices"])
            for name, vm in on_host.items():
                assert name in domains or vm["state"] in BUSY, (host_id, name, "no domain")

    def _name(self, data, existing=True):
        """A VM that exists (as read after the last step), or for a create one that does
        not (`missing_vm` covers unknown names)."""
        pool = sorted(name for name in NAMES if (name in self.vms) == existing)
        return _pick(data, pool or NAMES)

    def _controller(self):
        return self.client.application.extensions["hostplane_controller"]

    def _ids(self, kind):
        return [device_id for _, device_id, device_kind in self.devices if device_kind == kind]


def _pick(data, items):
    """One of `items` (None if there are none) by a draw whose bounds never change: the
    lists here follow the real world's answers (which VMs exist, which orphans), and a
    draw bounded by their length would make Hypothesis see its own data generation change
    between runs of one sequence (FlakyStrategyDefinition) whenever timing changed an
    answer."""
    index = data.draw(st.integers(min_value=0, max_value=255))
    return items[index % len(items)] if items else None


def _route(path):
    """`/v1/vms/sm-1/devices/host-a/0000:3b:00.0` → `/v1/vms/<id>/devices/<id>/<id>`."""
    parts = path.split("/")
    return "/".join(part if index < 3 or part in ("devices", "start", "stop") else "<id>"
                    for index, part in enumerate(parts))


def _within_usb_limits(vm, devices):
    counts = {}
    for device in vm["devices"]:
        version = devices[(device["host_id"], device["id"])].get("usb_version") or ""
        if device["kind"] == "usb":
            major = version[:1] if version[:2] in ("1.", "2.", "3.") else "2"   # unknown: 2
            counts[major] = counts.get(major, 0) + 1
    for major, count in counts.items():
        assert count <= USB_LIMITS[major], (vm["name"], counts)


def _audio_with_its_gpu(vm, devices):
    held = {d["id"] for d in vm["devices"]}
    for device_id in held:
        if device_id.endswith(".0") and devices[(vm["host"], device_id)]["type"] == "gpu":
            assert device_id[:-1] + "1" in held, (vm["name"], sorted(held))


class _Local:
    """`agent_domains` asks `.get(path)`: here, of an in-process agent's test client."""

    def __init__(self, agent):
        self.client = agent.app.test_client()

    def get(self, path):
        from tests.conftest import AUTH
        answer = self.client.get(path, headers=AUTH)
        return answer.status_code, answer.get_json()


def test_any_sequence_of_operator_actions_keeps_claims_and_domains_in_agreement(tmp_path):
    with two_host_world(tmp_path) as (_, client, agents):
        listing = client.get("/v1/devices", headers=ADMIN).get_json()["devices"]
        devices = [(d["host_id"], d["id"], d["type"] if d["kind"] == "pci" else "usb")
                   for d in listing
                   if (d["kind"] == "pci" and d["type"] == "gpu")
                   or (d["kind"] == "usb" and d["assignable"])]
        assert {kind for _, _, kind in devices} == {"gpu", "usb"}, listing
        ClaimsAgree.world = (client, agents, sorted(devices))
        _Answers.seen.clear()
        long_run = "HOSTPLANE_STATEFUL_EXAMPLES" in os.environ
        run_state_machine_as_test(ClaimsAgree, settings=settings(
            max_examples=int(os.environ.get("HOSTPLANE_STATEFUL_EXAMPLES", 40)),
            stateful_step_count=25, deadline=None, database=None,
            derandomize=not long_run,   # CI: the same sequences every run, never flaky
            suppress_health_check=list(HealthCheck)))
    seen = _Answers.seen
    print(f"\nstateful: {sum(seen.values())} actions;", ", ".join(
        f"{method} {route} {status}{' ' + code if code else ''} x{count}"
        for (method, route, status, code), count in sorted(seen.items(), key=str)))
    # the run did reach the interesting states, not only refusals
    assert seen[("POST", "/v1/vms", 201, None)] > 0
    assert any(key[:3] == ("POST", "/v1/vms/<id>/devices", 200) for key in seen)


pytestmark = pytest.mark.timeout(900)
