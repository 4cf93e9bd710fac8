"""The agent's HTTP API over a synthetic host: auth, errors, ETag polling, OpenAPI."""

import subprocess
import sys

import pytest

from agent.app import create_app
from tests.conftest import AUTH, agent_config
from tests.hosts import small_gpu_host
from tests.synthetic import write_proc, write_sysfs_tree


@pytest.fixture
def client(tmp_path):
    host = small_gpu_host()
    tree = write_sysfs_tree(host, tmp_path / "sys")
    proc = write_proc(str(tmp_path / "proc"), host)
    config = agent_config(tmp_path, host={"sysfs_root": tree, "proc_root": proc},
                          libvirt={"uri": "test:///default"})
    app = create_app(config)
    yield app.test_client()
    app.extensions["hostplane_agent"].close()


def test_health_needs_no_token_and_names_the_host(client):
    answer = client.get("/v1/health")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["host_id"] == "test-host" and len(body["boot_id"]) == 32
    assert body["status"] in ("ok", "degraded")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic dGVzdA=="}])
def test_every_other_endpoint_needs_the_token(client, headers):
    for path in ("/v1/devices", "/v1/host", "/v1/iommu-groups", "/v1/openapi.json",
                 "/v1/devices/pci/0000:3b:00.0"):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 401, path
        assert answer.get_json()["error"]["code"] == "unauthorized"


def test_devices_answer_304_while_nothing_changed(client):
    first = client.get("/v1/devices", headers=AUTH)
    assert first.status_code == 200 and first.headers["ETag"]
    body = first.get_json()
    assert body["generation"] >= 1 and len(body["pci"]) == 16 and len(body["usb"]) == 4
    again = client.get("/v1/devices", headers={**AUTH, "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    stale = client.get("/v1/devices", headers={**AUTH, "If-None-Match": '"0-stale"'})
    assert stale.status_code == 200


def test_generation_and_etag_move_when_a_device_is_held(client):
    agent = client.application.extensions["hostplane_agent"]
    before = client.get("/v1/devices", headers=AUTH)
    agent.inventory.set_attachments({"pci:0000:3b:00.0": "vm-1"})
    after = client.get("/v1/devices", headers={**AUTH, "If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200
    assert after.get_json()["generation"] == before.get_json()["generation"] + 1
    gpu = client.get("/v1/devices/pci/0000:3b:00.0", headers=AUTH).get_json()
    assert gpu["attached_to"] == "vm-1"


def test_one_device_by_id(client):
    gpu = client.get("/v1/devices/pci/0000:3B:00.0", headers=AUTH)
    assert gpu.status_code == 200 and gpu.get_json()["id"] == "0000:3b:00.0"
    stick = client.get("/v1/devices/usb/0781:5567:4C530001", headers=AUTH)
    assert stick.status_code == 200 and stick.get_json()["product"] == "Cruzer Blade"
    keyboard = client.get("/v1/devices/usb/046d:c31c@1-1.2", headers=AUTH)
    assert keyboard.status_code == 200


@pytest.mark.parametrize("path, status, code", [
    ("/v1/devices/pci/0000:99:00.0", 404, "device_not_found"),
    ("/v1/devices/usb/0781:5567:NOPE", 404, "device_not_found"),
    ("/v1/devices/pci/zz:zz.z", 400, "invalid_id"),
    ("/v1/devices/pci/..%2F..%2Fetc", 400, "invalid_id"),
    ("/v1/devices/usb/../../etc", 400, "invalid_id"),
    ("/v1/devices/usb/0781:5567", 400, "invalid_id"),
    ("/v1/nothing-here", 404, "not_found"),
])
def test_bad_or_unknown_ids_get_the_error_envelope(client, path, status, code):
    answer = client.get(path, headers=AUTH)
    assert answer.status_code == status
    error = answer.get_json()["error"]
    assert error["code"] == code and error["message"]


def test_wrong_method_is_405_with_envelope(client):
    answer = client.delete("/v1/devices", headers=AUTH)
    assert answer.status_code == 405 and answer.get_json()["error"]["code"] == "method_not_allowed"


def test_host_reports_iommu_from_kernel_command_line_and_groups(client):
    host = client.get("/v1/host", headers=AUTH).get_json()
    assert host["iommu"]["kernel_enabled"] is True
    assert host["iommu"]["ready"] is True and host["iommu"]["groups"] == 14
    assert host["cpu"]["threads"] == 64 and host["memory_mib"] == 524288


def test_iommu_groups_list_members_and_viability(client):
    groups = {g["group"]: g for g in client.get("/v1/iommu-groups", headers=AUTH).get_json()["groups"]}
    assert groups[11]["devices"] == ["0000:3b:00.0", "0000:3b:00.1"] and groups[11]["viable"]
    assert groups[2]["viable"] is False   # the AHCI controller the host boots from


def test_openapi_describes_every_route(client):
    spec = client.get("/v1/openapi.json", headers=AUTH).get_json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/health", "/v1/host", "/v1/devices", "/v1/devices/pci/{device_id}",
                 "/v1/devices/usb/{device_id}", "/v1/iommu-groups", "/metrics"):
        assert path in spec["paths"], path
    assert spec["paths"]["/v1/health"]["get"]["security"] == []


def test_metrics_count_devices_by_type(client):
    text = client.get("/metrics").get_data(as_text=True)
    assert 'hostplane_agent_devices{kind="pci",status="free",type="gpu"} 2.0' in text
    assert "hostplane_agent_inventory_generation" in text


def test_agent_refuses_to_serve_without_a_token(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOSTPLANE_HOST_ID": "x",
           "HOSTPLANE_AGENT_CONFIG": str(tmp_path / "missing.toml")}
    result = subprocess.run([sys.executable, "-m", "agent.cli", "serve"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no API token" in result.stderr


def test_config_file_and_environment_combine(tmp_path):
    from agent.config import load_agent_config
    path = tmp_path / "agent.toml"
    path.write_text('[server]\ntoken = "from-file"\nworkers = 4\n[host]\nsysfs_root = "/srv/sys"\n')
    config = load_agent_config(str(path), environ={"HOSTPLANE_SERVER_WORKERS": "3",
                                                   "HOSTPLANE_LIBVIRT_URI": "test:///default",
                                                   "HOSTPLANE_HOST_WATCH_UDEV": "no"})
    assert config["server"]["token"] == "from-file" and config["server"]["workers"] == 3
    assert config["host"]["sysfs_root"] == "/srv/sys" and config["host"]["watch_udev"] is False
    assert config["libvirt"]["uri"] == "test:///default"


def test_config_typos_are_refused_with_the_key(tmp_path):
    from agent.config import load_agent_config
    from hostplane.config import ConfigError
    path = tmp_path / "agent.toml"
    path.write_text('[server]\ntokn = "x"\n')
    with pytest.raises(ConfigError, match="server.tokn"):
        load_agent_config(str(path), environ={})
    with pytest.raises(ConfigError, match="HOSTPLANE_SERVER_WORKERS"):
        load_agent_config(None, environ={"HOSTPLANE_SERVER_WORKERS": "many"})


def test_a_host_id_the_controller_could_not_address_stops_the_agent(tmp_path):
    from agent.config import host_id
    from hostplane.config import ConfigError
    for bad in ("node/17", "-node", "node 17", "x" * 129):
        with pytest.raises(ConfigError, match=r"\[host\] id"):
            host_id(agent_config(tmp_path, host={"id": bad}))
    assert host_id(agent_config(tmp_path, host={"id": "node-17.rack:2"})) == "node-17.rack:2"
