"""The shipped Prometheus rules, checked with Prometheus's own promtool, against what the
services really export.

- `promtool check rules` and `promtool test rules` (deploy/prometheus/tests: series in,
  alerts out);
- every metric a rule reads is exported by a real agent or a real controller;
- `promtool check metrics` accepts both services' real /metrics;
- the gauges the alerts page on follow the cluster: an agent that stops answering turns
  `hostplane_controller_host_status{status="disconnected"}` on for its host, devices gone
  after an agent restart are counted unavailable on theirs, libvirtd's absence is
  `hostplane_agent_libvirt_up 0`.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH as AGENT_AUTH, TOKEN as AGENT_TOKEN, agent_config
from controller.db import upgrade
from tests.test_controller_support import (ADMIN, LoopbackAgent, Served, gpu_host, poller,
                                           two_host_world)
from tests.support import wait_until
from tests.test_faults_controller_support import ControllerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "deploy", "prometheus", "hostplane-rules.yml")
RULE_TESTS = os.path.join(ROOT, "deploy", "prometheus", "tests", "hostplane-rules.test.yml")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def promtool(*args, stdin=None):
    if shutil.which("promtool") is None:
        pytest.skip("promtool missing (Debian package prometheus; scripts/setup-host)")
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_rules_pass_promtool_check():
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_pass_promtool_test():
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_and_operator_text():
    with open(RULES) as rules, open(RULE_TESTS) as tests:
        groups, unit = yaml.safe_load(rules)["groups"], yaml.safe_load(tests)
    alerts = {rule["alert"]: rule for group in groups for rule in group["rules"]
              if "alert" in rule}
    tested = {case["alertname"] for test in unit["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert set(alerts) == tested
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two real agents and a real controller (HTTP on loopback), with one VM's attach and
    one failed attach on host-a so every histogram and counter has samples."""
    with two_host_world(tmp_path_factory.mktemp("alerts")) as (app, client, agents):
        served = Served(app)
        agent = agents["host-a"]
        requests.post(agent.url + "/v1/vms", headers=AGENT_AUTH, timeout=30, json={
            "name": "alerts-vm", "vcpus": 1, "memory_mib": 64}).raise_for_status()
        statuses = [requests.post(agent.url + "/v1/vms/alerts-vm/devices", headers=AGENT_AUTH,
                                  timeout=30, json={"type": "pci", "id": device}).status_code
                    for device in ("0000:3b:00.0", "0000:00:1f.0")]   # a GPU, a host bridge
        assert statuses == [200, 409]
        client.post("/v1/schedule/explain", headers=ADMIN, json={
            "name": "too-big", "vcpus": 1, "memory_mib": 64,
            "gpus": [{"vendor_id": "10de", "device_id": "1eb8", "count": 9}]})
        try:
            yield app, served.url, agents
        finally:
            requests.delete(agent.url + "/v1/vms/alerts-vm", headers=AGENT_AUTH, timeout=30)
            served.stop()


def scrape_text(url):
    answer = requests.get(url + "/metrics", timeout=10)
    assert answer.status_code == 200
    return answer.text


def samples(text):
    """{sample name: [(labels, value)]}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def rule_metric_names():
    """Every raw metric name the rules read (recorded `hostplane:` series excluded)."""
    with open(RULES) as rules:
        groups = yaml.safe_load(rules)["groups"]
    names = set()
    for group in groups:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b(hostplane_[a-z_]+)", rule["expr"]))
    return names


def test_every_metric_the_rules_read_is_exported(world):
    _app, url, agents = world
    exported = set(samples(scrape_text(url))) | set(samples(scrape_text(agents["host-a"].url)))
    missing = sorted(name for name in rule_metric_names() if name not in exported)
    assert not missing, f"rules read metrics no service exports: {missing}"
    assert {"hostplane_agent_attach_seconds_bucket", "hostplane_controller_host_status",
            "hostplane_controller_poll_failures_total"} <= rule_metric_names()


@pytest.mark.parametrize("role", ["agent", "controller"])
def test_promtool_accepts_the_real_metrics(world, role):
    _app, url, agents = world
    text = scrape_text(agents["host-a"].url if role == "agent" else url)
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_metrics_of_a_controller_under_gunicorn(world, tmp_path):
    """`hostplane-controller serve` with two workers, polling: /metrics merges every
    worker's files (prometheus-client's multiprocess mode) and adds the database gauges."""
    _app, _url, agents = world
    database = f"sqlite:///{tmp_path}/served.db"
    upgrade(database)
    controller = ControllerProcess(tmp_path, database)
    try:
        requests.post(controller.url + "/v1/hosts", headers=ADMIN, timeout=30, json={
            "url": agents["host-a"].url, "token": AGENT_TOKEN}).raise_for_status()

        def polled():
            text = scrape_text(controller.url)
            return text if 'hostplane_controller_poll_seconds_count{host="host-a"}' in text \
                else None

        text = wait_until("a poll of host-a in /metrics", polled)
    finally:
        controller.stop()
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    status = {labels["status"]: value for labels, value
              in samples(text)["hostplane_controller_host_status"]}
    assert status["connected"] == 1


def test_gauges_follow_a_lost_agent_and_devices_gone_at_restart(tmp_path):
    with two_host_world(tmp_path) as (app, _client, agents):
        served = Served(app)
        try:
            agents["host-b"].stop()
            for _ in range(3):              # [poll] max_failures
                poller(app).poll_cycle()
            changed = gpu_host()
            changed.pci = [f for f in changed.pci if not f.address.startswith("0000:af:00.")]
            agents["host-a"].restart(changed)
            poller(app).poll_cycle()
            found = samples(scrape_text(served.url))
        finally:
            served.stop()
    status = {(labels["host"], labels["status"]): value
              for labels, value in found["hostplane_controller_host_status"]}
    assert status == {("host-a", "connecting"): 0, ("host-a", "connected"): 1,
                      ("host-a", "disconnected"): 0, ("host-b", "connecting"): 0,
                      ("host-b", "connected"): 0, ("host-b", "disconnected"): 1}
    unavailable = {labels["host"]: value
                   for labels, value in found["hostplane_controller_host_devices"]
                   if labels["status"] == "unavailable"}
    assert unavailable == {"host-a": 2, "host-b": 0}       # the GPU at af:00.0 and its audio
    failures = {labels["host"]: value
                for labels, value in found["hostplane_controller_poll_failures_total"]}
    assert failures["host-b"] == 4 and failures.get("host-a", 0) == 0   # 4 cycles, 4 failed


def test_agent_says_libvirt_down_in_metrics(tmp_path):
    from agent.app import create_app
    config = agent_config(tmp_path, libvirt={
        "uri": "qemu:///system?socket=/nonexistent/libvirt-sock"})
    app = create_app(config)
    try:
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert samples(text)["hostplane_agent_libvirt_up"] == [({}, 0.0)]
    finally:
        app.extensions["hostplane_agent"].close()
    agent = LoopbackAgent(tmp_path, "libvirt-up", gpu_host())
    try:
        assert samples(scrape_text(agent.url))["hostplane_agent_libvirt_up"] == [({}, 1.0)]
    finally:
        agent.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="site.yml's plays become root")
def test_ansible_installs_the_rules_only_as_promtool_accepts_them(tmp_path):
    """site.yml's optional play, run for real on this machine (local connection) into a
    scratch rules directory; a rules file promtool refuses never replaces a working one."""
    promtool("--version")
    rules_dir = tmp_path / "rules"
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: up ==\n")

    def run(**extra):
        inventory = tmp_path / "inventory.ini"
        settings = {"ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                    "hostplane_prometheus_rules_dir": str(rules_dir),
                    "hostplane_prometheus_rules_reload": "false", **extra}
        inventory.write_text("[hostplane_prometheus_servers]\nlocalhost "
                             + " ".join(f"{k}={v}" for k, v in settings.items()) + "\n")
        venv_bin = os.path.dirname(sys.executable)
        return subprocess.run(
            [os.path.join(venv_bin, "ansible-playbook"), "-i", str(inventory), "site.yml"],
            cwd=os.path.join(ROOT, "ansible"), capture_output=True, text=True, timeout=300,
            env={**os.environ, "PATH": venv_bin + os.pathsep + os.environ["PATH"]})

    installed = rules_dir / "hostplane.yml"
    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    with open(RULES) as shipped:
        assert installed.read_text() == shipped.read()
    refused = run(hostplane_prometheus_rules_file=str(broken))
    assert refused.returncode != 0 and "could not parse expression" in refused.stdout, refused.stdout
    with open(RULES) as shipped:
        assert installed.read_text() == shipped.read()
