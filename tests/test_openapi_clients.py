"""The published OpenAPI documents, as the ecosystem's own tools read them.

Both specs pass `openapi-spec-validator`; `openapi-python-client` generates a Python client
from each (once per module, from the document the running service serves), and those
clients drive a real agent and a real controller on loopback: register a host, list
devices, explain, create and delete a VM, read error envelopes. Every client is built with
`raise_on_unexpected_status`, so an answer whose status the spec does not list fails here.
"""

import importlib
import json
import subprocess
import sys

import pytest
import requests
from flask import Flask
from openapi_spec_validator import validate
from pydantic import RootModel, create_model

from hostplane.api import describe, openapi_document
from tests.conftest import AUTH as AGENT_AUTH, TOKEN as AGENT_TOKEN
from tests.test_controller_support import (ADMIN, ADMIN_TOKEN, NVIDIA_A10, LoopbackAgent,
                                           Served, controller_app, controller_config, gpu_host)

A10 = {"vendor_id": NVIDIA_A10[0], "device_id": NVIDIA_A10[1]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A real agent (synthetic host with two 10de:2236 GPUs) and a real controller that
    does not know it yet, both serving HTTP on loopback."""
    base = tmp_path_factory.mktemp("openapi")
    agent = LoopbackAgent(base, "host-gen", gpu_host(NVIDIA_A10))
    app = controller_app(controller_config(base))
    controller = Served(app)
    try:
        yield agent, controller
    finally:
        controller.stop()
        agent.stop()
        app.extensions["hostplane_controller"].close()


def served_spec(url, headers):
    answer = requests.get(url + "/v1/openapi.json", headers=headers, timeout=10)
    assert answer.status_code == 200
    return answer.json()


@pytest.fixture(scope="module")
def clients(world, tmp_path_factory):
    """{"agent": package, "controller": package}: clients generated from the served specs."""
    agent, controller = world
    out = tmp_path_factory.mktemp("clients")
    config = out / "generator.yml"
    config.write_text("post_hooks: []\n")     # no formatter run: nothing here reads the style
    packages = {}
    for role, url, headers in (("agent", agent.url, AGENT_AUTH),
                               ("controller", controller.url, ADMIN)):
        spec = out / f"{role}.json"
        spec.write_text(json.dumps(served_spec(url, headers)))
        name = f"hostplane_{role}_client"
        run = subprocess.run(
            [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec),
             "--meta", "none", "--output-path", str(out / name), "--config", str(config)],
            capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
        packages[role] = name
    sys.path.insert(0, str(out))
    try:
        yield {role: importlib.import_module(name) for role, name in packages.items()}
    finally:
        sys.path.remove(str(out))
        for module in [m for m in sys.modules if m.startswith(tuple(packages.values()))]:
            del sys.modules[module]


def api(package, dotted):
    """`package.api.<tag>.<operation>` of a generated client."""
    return importlib.import_module(f"{package.__name__}.api.{dotted}")


def model(package, name):
    return getattr(importlib.import_module(f"{package.__name__}.models"), name)


def authenticated(package, url, token):
    return package.AuthenticatedClient(base_url=url, token=token, timeout=30,
                                       raise_on_unexpected_status=True)


@pytest.mark.parametrize("role", ["agent", "controller"])
def test_published_spec_is_valid_openapi_3_1(world, role):
    agent, controller = world
    url, headers = (agent.url, AGENT_AUTH) if role == "agent" else (controller.url, ADMIN)
    spec = served_spec(url, headers)
    assert spec["openapi"].startswith("3.1.")
    validate(spec)          # raises, naming the path in the document, when invalid


def test_a_model_without_a_legal_component_name_is_refused_not_published():
    app = Flask(__name__)

    @app.post("/things")
    @describe("Make a thing", body=RootModel[list[int]])
    def things():
        return {}

    with pytest.raises(ValueError, match="component name"):
        openapi_document(app, "t", "1")


def test_two_different_models_of_one_name_are_refused_not_merged():
    def model_named_thing(field):
        return create_model("Thing", **{field: (int, ...)})

    app = Flask(__name__)
    for field in ("a", "b"):
        @app.post(f"/things-{field}", endpoint=f"things_{field}")
        @describe("Make a thing", body=model_named_thing(field))
        def things():
            return {}

    with pytest.raises(ValueError, match="two different models are named 'Thing'"):
        openapi_document(app, "t", "1")


def test_generated_agent_client_lists_devices_creates_a_vm_and_reads_errors(world, clients):
    agent, _controller = world
    package = clients["agent"]
    client = authenticated(package, agent.url, AGENT_TOKEN)
    health = api(package, "host.health_health_get").sync(
        client=package.Client(base_url=agent.url, raise_on_unexpected_status=True))
    assert health["status"] == "ok" and health["host_id"] == "host-gen"

    devices = api(package, "devices.devices_devices_get").sync(client=client)
    gpus = [d["id"] for d in devices["pci"] if d["type"] == "gpu"]
    assert len(gpus) == 2

    create_vm = api(package, "vms.vms_create_vm_post")
    body = model(package, "VmCreate")(name="gen-agent-vm", vcpus=1, memory_mib=64)
    answer = create_vm.sync_detailed(client=client, body=body)
    assert answer.status_code == 201, answer.content
    try:
        listed = api(package, "vms.vms_list_vms_get").sync(client=client)
        assert "gen-agent-vm" in [vm["name"] for vm in listed["vms"]]
        again = create_vm.sync(client=client, body=body)
        assert isinstance(again, model(package, "Error"))
        assert again.error.code == "vm_exists" and "gen-agent-vm" in again.error.message
    finally:
        deleted = api(package, "vms.vms_delete_vm_delete").sync_detailed(
            client=client, name="gen-agent-vm")
    assert deleted.status_code == 204, deleted.content

    missing = api(package, "devices.devices_pci_device_get").sync(
        client=client, device_id="0000:7f:00.0")
    assert isinstance(missing, model(package, "Error"))
    assert missing.error.code == "device_not_found" and missing.error.message
    wrong = api(package, "devices.devices_devices_get").sync(
        client=authenticated(package, agent.url, "wrong-token-0123456789"))
    assert isinstance(wrong, model(package, "Error")) and wrong.error.code == "unauthorized"


def test_generated_controller_client_registers_explains_creates_and_deletes(world, clients):
    agent, controller = world
    package = clients["controller"]
    client = authenticated(package, controller.url, ADMIN_TOKEN)
    host = api(package, "hosts.hosts_register_post").sync(
        client=client, body=model(package, "HostCreate")(url=agent.url, token=AGENT_TOKEN))
    assert host["id"] == "host-gen" and host["status"] == "connected"

    devices = api(package, "devices.devices_listing_get").sync(client=client, type_="gpu")
    assert {d["status"] for d in devices["devices"]} == {"ready"}
    assert len(devices["devices"]) == 2

    gpu = model(package, "GpuBody")(count=1, **A10)
    vm = model(package, "VmCreate")(name="gen-ctl-vm", vcpus=1, memory_mib=64, gpus=[gpu],
                                    start=False)
    explained = api(package, "schedule.schedule_explain_post").sync(client=client, body=vm)
    assert explained["chosen"] == "host-gen"

    created = api(package, "vms.vms_create_post").sync_detailed(client=client, body=vm)
    assert created.status_code == 201, created.content
    assert json.loads(created.content)["host"] == "host-gen"
    agent_vms = requests.get(agent.url + "/v1/vms", headers=AGENT_AUTH, timeout=10).json()
    assert "gen-ctl-vm" in [v["name"] for v in agent_vms["vms"]]

    too_many = model(package, "VmCreate")(
        name="gen-ctl-big", vcpus=1, memory_mib=64, gpus=[model(package, "GpuBody")(
            count=3, **A10)])
    refused = api(package, "vms.vms_create_post").sync(client=client, body=too_many)
    assert isinstance(refused, model(package, "Error"))
    assert refused.error.code == "unplaceable"
    assert "host-gen" in refused.error.details["hosts"]

    deleted = api(package, "vms.vms_delete_delete").sync_detailed(client=client,
                                                                 name="gen-ctl-vm")
    assert deleted.status_code == 204, deleted.content
    agent_vms = requests.get(agent.url + "/v1/vms", headers=AGENT_AUTH, timeout=10).json()
    assert "gen-ctl-vm" not in [v["name"] for v in agent_vms["vms"]]
    devices = api(package, "devices.devices_listing_get").sync(client=client, type_="gpu")
    assert {d["status"] for d in devices["devices"]} == {"ready"}
