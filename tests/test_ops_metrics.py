"""What an operator's Prometheus scrapes, checked against the APIs it summarises.

A real controller serving two real agents (the controller's loopback helpers); each
family is checked by what changes in it when the thing it counts happens.
"""

from collections import Counter

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.test_controller_support import ADMIN, Served, two_host_world
from tests.conftest import AUTH as AGENT_AUTH


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with two_host_world(tmp_path_factory.mktemp("metrics")) as (app, _client, agents):
        served = Served(app)
        try:
            yield served.url, agents
        finally:
            served.stop()


def scrape(url):
    """{family name: [(labels, value)]} from /metrics, fetched without a token."""
    answer = requests.get(url + "/metrics", timeout=10)
    assert answer.status_code == 200
    return {family.name: [(sample.labels, sample.value) for sample in family.samples]
            for family in text_string_to_metric_families(answer.text)}


def test_controller_counts_hosts_by_status_and_devices_by_type_and_status(world):
    url, _agents = world
    devices = requests.get(url + "/v1/devices", headers=ADMIN, timeout=10).json()["devices"]
    metrics = scrape(url)
    assert {labels["status"]: value for labels, value in metrics["hostplane_controller_hosts"]} \
        == {"connected": 2}
    exported = {(labels["type"], labels["status"]): value
                for labels, value in metrics["hostplane_controller_devices"] if value}
    assert exported == dict(Counter((d["type"], d["status"]) for d in devices))


def test_controller_times_its_api_per_endpoint(world):
    url, _agents = world
    for _ in range(3):
        requests.get(url + "/v1/hosts", headers=ADMIN, timeout=10)
    samples = scrape(url)["hostplane_controller_api_request_seconds"]
    counts = [value for labels, value in samples
              if labels.get("endpoint") == "hosts.listing" and labels.get("status") == "200"
              and labels.get("le") == "+Inf"]
    assert counts and counts[0] >= 3


def test_agent_counts_its_devices_by_kind_type_and_status(world):
    _url, agents = world
    agent = agents["host-a"]
    inventory = requests.get(agent.url + "/v1/devices", headers=AGENT_AUTH, timeout=10).json()
    exported = scrape(agent.url)["hostplane_agent_devices"]
    assert sum(value for _labels, value in exported) == \
        len(inventory["pci"]) + len(inventory["usb"])
    gpus = sum(value for labels, value in exported
               if labels["kind"] == "pci" and labels["type"] == "gpu")
    assert gpus == sum(1 for d in inventory["pci"] if d["type"] == "gpu")


def families_like(metrics, *words):
    return [name for name in metrics if all(word in name for word in words)]


def test_controller_exports_poll_latency_and_failures_per_host(world):
    url, _agents = world
    metrics = scrape(url)
    latency = families_like(metrics, "poll", "seconds")
    failures = families_like(metrics, "poll", "fail")
    assert latency and failures
    assert any("host" in labels for labels, _ in metrics[latency[0]])


def test_controller_counts_scheduler_decisions_and_refusals(world):
    url, _agents = world

    def counts():
        metrics = scrape(url)
        decisions = {(labels["operation"], labels["outcome"]): value for labels, value
                     in metrics.get("hostplane_controller_scheduler_decisions", [])}
        refusals = sum(value for _, value in metrics.get(
            "hostplane_controller_scheduler_refusals", []))
        return decisions.get(("explain", "refused"), 0), refusals

    before = counts()
    answer = requests.post(url + "/v1/schedule/explain", headers=ADMIN, timeout=10, json={
        "name": "m", "vcpus": 1, "memory_mib": 64,
        "gpus": [{"vendor_id": "10de", "device_id": "1eb8", "count": 9}]})
    assert answer.status_code == 200 and answer.json()["chosen"] is None
    decided, refused = counts()
    assert decided == before[0] + 1     # one explain, refused
    assert refused > before[1]          # and counted by its reasons


def test_agent_exports_attach_latency(world):
    _url, agents = world
    agent = agents["host-a"]
    gpu = next(d["id"] for d in requests.get(agent.url + "/v1/devices", headers=AGENT_AUTH,
                                             timeout=10).json()["pci"] if d["type"] == "gpu")
    assert requests.post(agent.url + "/v1/vms", headers=AGENT_AUTH, timeout=30, json={
        "name": "metrics-vm", "vcpus": 1, "memory_mib": 64}).status_code == 201
    try:        # test:/// has no detach; detach timing is checked on qemu:///system
        answer = requests.post(agent.url + "/v1/vms/metrics-vm/devices", headers=AGENT_AUTH,
                               json={"type": "pci", "id": gpu}, timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        requests.delete(agent.url + "/v1/vms/metrics-vm", headers=AGENT_AUTH, timeout=30)
    family = families_like(scrape(agent.url), "attach", "seconds")
    assert family
    counts = {labels["operation"]: value for labels, value in scrape(agent.url)[family[0]]
              if labels.get("le") == "+Inf" and labels["kind"] == "pci"
              and labels["outcome"] == "ok"}
    assert counts == {"attach": 1}
