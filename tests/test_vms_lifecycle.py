"""VM lifecycle on a real libvirtd (qemu:///system): diskless SeaBIOS guests under TCG.

Also the bad-input rules: unknown VM 404, bad names and memory 0 answer 400 with
nothing changed, libvirtd unreachable 503 while /v1/health says "degraded".
"""

import libvirt
import pytest

from tests.conftest import AUTH
from tests.test_virt_support import agent_client, create_vm, inactive_xml, lv, prefix  # noqa: F401


@pytest.fixture
def client(tmp_path, lv):  # noqa: F811
    with agent_client(tmp_path) as (test_client, _):
        yield test_client


def test_diskless_vm_is_defined_started_stopped_and_deleted(client, lv, prefix):  # noqa: F811
    name = f"{prefix}-life"
    created = create_vm(client, name, vcpus=2, memory_mib=96)
    assert (created["state"], created["vcpus"], created["memory_mib"]) == ("stopped", 2, 96)
    assert lv.lookupByName(name).info()[0] == libvirt.VIR_DOMAIN_SHUTOFF

    started = client.post(f"/v1/vms/{name}/start", headers=AUTH)
    assert started.status_code == 200 and started.get_json()["state"] == "running"
    assert lv.lookupByName(name).isActive()
    listed = {vm["name"]: vm for vm in client.get("/v1/vms", headers=AUTH).get_json()["vms"]}
    assert listed[name]["state"] == "running"

    stopped = client.post(f"/v1/vms/{name}/stop", headers=AUTH, json={"force": True})
    assert stopped.status_code == 200 and stopped.get_json()["state"] == "stopped"
    assert not lv.lookupByName(name).isActive()

    assert client.delete(f"/v1/vms/{name}", headers=AUTH).status_code == 204
    assert name not in [d.name() for d in lv.listAllDomains()]
    assert client.get(f"/v1/vms/{name}", headers=AUTH).status_code == 404


def test_graceful_stop_times_out_on_a_guest_without_os_and_force_stops_it(client, lv, prefix):  # noqa: F811
    name = f"{prefix}-acpi"
    create_vm(client, name, start=True)
    answer = client.post(f"/v1/vms/{name}/stop", headers=AUTH, json={"timeout_s": 1})
    assert answer.status_code == 409
    assert answer.get_json()["error"]["code"] == "stop_timeout"
    assert lv.lookupByName(name).isActive()
    forced = client.post(f"/v1/vms/{name}/stop", headers=AUTH, json={"force": True})
    assert forced.get_json()["state"] == "stopped"


def test_domain_xml_has_nics_on_named_bridges_and_disks_which_stay_unless_asked(
        client, lv, prefix, tmp_path):  # noqa: F811
    storage = tmp_path / "images"
    storage.mkdir()
    keep, drop = storage / "keep.img", storage / "drop.img"
    for image in (keep, drop):
        image.write_bytes(b"\0" * 4096)
    name_keep, name_drop = f"{prefix}-keep", f"{prefix}-drop"
    vm = create_vm(client, name_keep, networks=[{"bridge": "hpbr-test0"}],
                   disks=[{"path": str(keep), "format": "raw"}])
    assert vm["networks"][0]["bridge"] == "hpbr-test0"
    assert vm["disks"] == [{"path": str(keep), "target": "vda"}]
    xml = inactive_xml(lv, name_keep)
    assert "<source bridge='hpbr-test0'/>" in xml and f"<source file='{keep}'/>" in xml
    create_vm(client, name_drop, disks=[{"path": "drop.img", "format": "raw"}])  # by name
    assert f"<source file='{drop}'/>" in inactive_xml(lv, name_drop)

    assert client.delete(f"/v1/vms/{name_keep}", headers=AUTH).status_code == 204
    assert client.delete(f"/v1/vms/{name_drop}?delete_storage=true", headers=AUTH
                         ).status_code == 204
    assert keep.exists() and not drop.exists()


def test_a_new_disk_is_created_in_the_storage_directory_and_deleted_with_the_vm(
        client, lv, prefix, tmp_path):  # noqa: F811
    name = f"{prefix}-new"
    vm = create_vm(client, name, disks=[{"size_mib": 8, "format": "qcow2"},
                                        {"size_mib": 4, "format": "raw"}])
    images = [tmp_path / "images" / f"{name}-vda.qcow2", tmp_path / "images" / f"{name}-vdb.raw"]
    assert [d["path"] for d in vm["disks"]] == [str(p) for p in images]
    assert images[0].read_bytes()[:4] == b"QFI\xfb" and images[1].stat().st_size == 4 << 20
    assert client.delete(f"/v1/vms/{name}?delete_storage=true", headers=AUTH).status_code == 204
    assert not any(p.exists() for p in images)


@pytest.mark.parametrize("where", ["outside", "symlink", "missing", "storage-itself"])
def test_disks_outside_the_storage_directory_are_400_and_nothing_is_defined(
        client, lv, prefix, tmp_path, where):  # noqa: F811
    storage = tmp_path / "images"
    storage.mkdir()
    outside = tmp_path / "precious.img"
    outside.write_text("the operator's data")
    (storage / "escape.img").symlink_to(outside)
    path = {"outside": str(outside), "symlink": str(storage / "escape.img"),
            "missing": str(storage / "nothing.img"), "storage-itself": str(storage)}[where]
    answer = client.post("/v1/vms", headers=AUTH, json={
        "name": f"{prefix}-esc", "vcpus": 1, "memory_mib": 64, "disks": [{"path": path}]})
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["error"]["code"] == (
        "disk_not_found" if where == "missing" else "disk_outside_storage")
    assert f"{prefix}-esc" not in [d.name() for d in lv.listAllDomains()]
    assert outside.read_text() == "the operator's data"


def test_a_disk_pointed_outside_with_virsh_is_not_deleted_with_the_vm(
        client, lv, prefix, tmp_path):  # noqa: F811
    name = f"{prefix}-edited"
    create_vm(client, name, disks=[{"size_mib": 1, "format": "raw"}])
    outside = tmp_path / "precious.img"
    outside.write_text("the operator's data")
    xml = inactive_xml(lv, name).replace(str(tmp_path / "images" / f"{name}-vda.raw"),
                                         str(outside))
    lv.defineXML(xml)                         # an edit behind the agent's back
    assert client.delete(f"/v1/vms/{name}?delete_storage=true", headers=AUTH).status_code == 204
    assert outside.read_text() == "the operator's data"
    assert name not in [d.name() for d in lv.listAllDomains()]


def test_a_taken_name_is_a_conflict(client, prefix):  # noqa: F811
    create_vm(client, f"{prefix}-same")
    again = client.post("/v1/vms", headers=AUTH, json={
        "name": f"{prefix}-same", "vcpus": 1, "memory_mib": 64})
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "vm_exists"


@pytest.mark.parametrize("method,suffix", [
    ("get", ""), ("post", "/start"), ("post", "/stop"), ("delete", ""),
    ("delete", "/devices/0000:3b:00.0")])
def test_unknown_vm_is_404(client, prefix, method, suffix):  # noqa: F811
    answer = getattr(client, method)(f"/v1/vms/{prefix}-nobody{suffix}", headers=AUTH, json={})
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] == "vm_not_found"


def test_attach_to_unknown_vm_is_404(client, prefix):  # noqa: F811
    answer = client.post(f"/v1/vms/{prefix}-nobody/devices", headers=AUTH,
                         json={"type": "pci", "id": "0000:3b:00.0"})
    assert answer.status_code == 404


@pytest.mark.parametrize("name", ["../x", "x" * 200, "<x>", "", "a b", "-lead"])
def test_bad_names_are_400_and_nothing_is_defined(client, lv, name):  # noqa: F811
    before = sorted(d.name() for d in lv.listAllDomains())
    answer = client.post("/v1/vms", headers=AUTH, json={"name": name, "vcpus": 1,
                                                        "memory_mib": 64})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "invalid_request"
    assert sorted(d.name() for d in lv.listAllDomains()) == before


@pytest.mark.parametrize("name", ["%3Cx%3E", "x" * 200, "a%20b"])
def test_bad_names_in_the_path_are_400(client, name):
    for method, suffix in (("get", ""), ("post", "/start"), ("post", "/stop"),
                           ("delete", ""), ("post", "/devices")):
        answer = getattr(client, method)(f"/v1/vms/{name}{suffix}", headers=AUTH, json={})
        assert answer.status_code == 400, (method, suffix, answer.get_json())
        assert answer.get_json()["error"]["code"] == "invalid_name"


def test_a_path_climbing_out_matches_no_route(client):
    assert client.post("/v1/vms/..%2Fx/start", headers=AUTH, json={}).status_code == 404


@pytest.mark.parametrize("body,field", [
    ({"memory_mib": 0}, "memory_mib"), ({"vcpus": 0}, "vcpus"),
    ({"disks": [{"path": "/var/lib/../../etc/shadow"}]}, "disks.0.path"),
    ({"disks": [{"format": "raw"}]}, "disks.0"),
    ({"disks": [{"path": "a.img", "size_mib": 1}]}, "disks.0"),
    ({"networks": [{"bridge": "br0; rm -rf /"}]}, "networks.0.bridge"),
    ({"devices": [{"type": "pci", "id": "not-an-address"}]}, None),
    ({"devices": [{"type": "floppy", "id": "x"}]}, "devices.0.type"),
    ({"surprise": 1}, "surprise")])
def test_bad_bodies_are_400_naming_the_field(client, lv, prefix, body, field):  # noqa: F811
    answer = client.post("/v1/vms", headers=AUTH, json={
        "name": f"{prefix}-bad", "vcpus": 1, "memory_mib": 64, **body})
    assert answer.status_code == 400, answer.get_json()
    if field:
        assert field in answer.get_json()["error"]["message"]
    assert f"{prefix}-bad" not in [d.name() for d in lv.listAllDomains()]


def test_libvirtd_unreachable_is_503_and_health_degraded(tmp_path):
    with agent_client(tmp_path, uri="qemu:///system?socket=/nonexistent/libvirt-sock") \
            as (client, _):
        answer = client.get("/v1/vms", headers=AUTH)
        assert answer.status_code == 503
        error = answer.get_json()["error"]
        assert error["code"] == "dependency_unavailable"
        assert "unreachable" in error["message"] and "/nonexistent/libvirt-sock" in error["message"]
        health = client.get("/v1/health")
        assert health.status_code == 200 and health.get_json()["status"] == "degraded"
        assert health.get_json()["libvirt"]["ok"] is False
        assert client.get("/v1/devices", headers=AUTH).status_code == 200
