"""The `hostplane` operator CLI against a real controller serving two real agents.

The agents serve synthetic sysfs trees through the controller slice's loopback helpers
(host-a: two 10de:1eb8 GPUs, host-b: two 10de:2236; one USB stick each).
"""

import io
import json
import os
import subprocess
import sys
import time

import pytest
import requests

from controller import opcli
from tests.conftest import TOKEN as AGENT_TOKEN
from tests.test_controller_support import ADMIN, ADMIN_TOKEN, Served, \
    two_host_world
from tests.support import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def world(tmp_path):
    with two_host_world(tmp_path) as (app, _client, _agents):
        served = Served(app)
        try:
            yield served.url
        finally:
            served.stop()


def run(capsys, url, *argv, token=ADMIN_TOKEN):
    status = opcli.main(["--url", url, "--token", token, *argv])
    out, err = capsys.readouterr()
    return status, out, err


def api(url, path, method="GET", **kwargs):
    return requests.request(method, url + path, headers=ADMIN, timeout=10, **kwargs).json()


def columns(out):
    """Split an aligned table by the header's column starts: [{heading: cell}]."""
    lines = out.rstrip("\n").splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    names = header.split()
    table = []
    for line in lines[1:]:
        cells = [line[start:end].strip() for start, end in zip(starts, starts[1:] + [None])]
        # Aligned: nothing spills over a column boundary.
        assert all(start == 0 or line[start - 1:start] in (" ", "") for start in starts), line
        table.append(dict(zip(names, cells)))
    return table


def test_hosts_table_is_aligned_and_shows_status(capsys, world):
    status, out, _ = run(capsys, world, "hosts")
    assert status == 0
    table = columns(out)
    assert [(row["ID"], row["STATUS"], row["STATE"]) for row in table] == \
        [("host-a", "connected", "enabled"), ("host-b", "connected", "enabled")]
    threads = {h["id"]: h["cpu_threads"] for h in api(world, "/v1/hosts")["hosts"]}
    assert [row["VCPUS"] for row in table] == [f"0/{threads['host-a']}",
                                               f"0/{threads['host-b']}"]


def test_devices_filters_match_the_api(capsys, world):
    status, out, _ = run(capsys, world, "devices", "--host", "host-b", "--type", "gpu")
    assert status == 0
    expected = api(world, "/v1/devices?host=host-b&type=gpu")["devices"]
    assert len(expected) == 2
    assert [(row["HOST"], row["ID"], row["STATUS"]) for row in columns(out)] == \
        [(d["host_id"], d["id"], d["status"]) for d in expected]

    status, out, _ = run(capsys, world, "--json", "devices", "--kind", "usb")
    assert status == 0 and json.loads(out) == api(world, "/v1/devices?kind=usb")

    status, out, err = run(capsys, world, "devices", "--status", "attached")
    assert status == 0 and out.strip() == "(none)"


def test_schedule_explain_lists_every_rejected_host_with_its_reasons(capsys, world):
    status, out, _ = run(capsys, world, "schedule", "--explain", "--vcpus", "2",
                         "--memory-mib", "1024", "--gpu", "10de:1eb8x3")
    assert status == 1
    assert out.startswith("not placeable on any host")
    answer = api(world, "/v1/schedule/explain", "POST", json={
        "name": "explain-probe", "vcpus": 2, "memory_mib": 1024,
        "gpus": [{"vendor_id": "10de", "device_id": "1eb8", "count": 3}]})
    expected = answer["rejected"]
    rejected = columns(out.split("rejected:\n", 1)[1])
    assert [(row["HOST"], row["REASON"]) for row in rejected] == \
        [(host, reason) for host in sorted(expected) for reason in expected[host]]
    assert [row["CODE"] for row in rejected] == \
        [r["code"] for host in sorted(expected) for r in answer["reasons"][host]]
    assert {row["HOST"]: row["CODE"] for row in rejected} == \
        {"host-a": "not_enough_gpus", "host-b": "no_gpu_model"}

    status, out, _ = run(capsys, world, "schedule", "--explain", "--vcpus", "2",
                         "--memory-mib", "1024", "--gpu", "10de:1eb8x3",
                         "--code", "no_gpu_model")
    assert [(row["HOST"], row["CODE"]) for row in columns(out.split("rejected:\n", 1)[1])] \
        == [("host-b", "no_gpu_model")]

    status, out, _ = run(capsys, world, "schedule", "--explain", "--vcpus", "2",
                         "--memory-mib", "1024", "--gpu", "10de:2236x2")
    assert status == 0 and out.startswith("placeable: host-b would be chosen")


def test_schedule_creates_a_vm_that_vms_then_lists(capsys, world):
    status, out, _ = run(capsys, world, "schedule", "--name", "opcli-vm1", "--vcpus", "1",
                         "--memory-mib", "128", "--gpu", "10de:2236", "--no-start")
    assert status == 0, out
    assert out.startswith("VM opcli-vm1 is ") and " on host-b" in out.splitlines()[0]
    status, out, _ = run(capsys, world, "vms")
    rows = columns(out)
    assert [(r["NAME"], r["HOST"]) for r in rows] == [("opcli-vm1", "host-b")]
    gpu = [d for d in api(world, "/v1/devices?host=host-b&type=gpu")["devices"]
           if d["vm"] == "opcli-vm1"]
    assert len(gpu) == 1 and gpu[0]["id"] in rows[0]["DEVICES"]


def test_a_refused_create_prints_each_hosts_reasons_with_their_codes(capsys, world):
    status, _, err = run(capsys, world, "schedule", "--name", "opcli-big", "--vcpus", "1",
                         "--memory-mib", "64", "--gpu", "10de:2236x3")
    assert status == 1
    assert "fits on none of 2 hosts (unplaceable, HTTP 422)" in err
    assert "  host-a: no GPU 10de:2236 on this host [no_gpu_model]" in err.splitlines()
    assert "  host-b: only 2 of 3 GPUs 10de:2236 free [not_enough_gpus]" in err.splitlines()
    assert "reasons" not in err   # the codes are on the lines, not dumped again as JSON


def test_errors_are_the_apis_message_and_a_nonzero_exit(capsys, world):
    status, _, err = run(capsys, world, "hosts", token="wrong-token")
    assert status == 1 and "missing or wrong bearer token (unauthorized, HTTP 401)" in err
    status, _, err = run(capsys, world, "schedule", "--explain", "--vcpus", "1",
                         "--memory-mib", "64", "--gpu", "nvidia")
    assert status == 2 and "--gpu 'nvidia'" in err
    status, _, err = run(capsys, f"http://127.0.0.1:{free_port()}", "hosts")
    assert status == 2 and "cannot reach the controller" in err
    status, _, err = opcli.main(["--url", world, "hosts"]), *capsys.readouterr()
    assert status == 2 and "no token" in err


def test_networks_lists_the_controllers_networks(capsys, world):
    status, out, _ = run(capsys, world, "--json", "networks")
    assert status == 0 and json.loads(out) == api(world, "/v1/networks")


def test_progress_is_reported_while_waiting_and_the_answer_returned():
    stream = io.StringIO()
    answer = opcli.with_progress(lambda: time.sleep(1.2) or "done", "creating VM x", stream,
                                 every_s=0.1)
    assert answer == "done"
    lines = stream.getvalue().splitlines()
    assert lines[0] == "creating VM x... 0s"
    assert lines[-1].startswith("creating VM x: done in 1.")


def test_console_script_reads_url_and_token_from_the_environment(world):
    environ = {**os.environ, "HOSTPLANE_URL": world, "HOSTPLANE_TOKEN": ADMIN_TOKEN}
    script = os.path.join(os.path.dirname(sys.executable), "hostplane")   # this venv's
    result = subprocess.run([script, "--json", "hosts"],
                            env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [h["id"] for h in json.loads(result.stdout)["hosts"]] == ["host-a", "host-b"]


def test_vm_lifecycle_and_devices_from_the_cli_match_the_api(capsys, world):
    status, out, err = run(capsys, world, "vm", "create", "cli-vm", "--vcpus", "1",
                           "--memory-mib", "128", "--gpu", "10de:1eb8", "--no-start")
    assert status == 0, err
    assert out.startswith("VM cli-vm is stopped on host-a")
    status, out, err = run(capsys, world, "vm", "attach", "cli-vm", "--usb", "0781:5567:4C530001")
    assert status == 0, err
    assert ("usb", "0781:5567:4C530001") in {(r["KIND"], r["ID"]) for r in
                                             columns(out.split("\n", 1)[1])}
    assert run(capsys, world, "vm", "start", "cli-vm")[1].startswith("VM cli-vm is running")
    assert api(world, "/v1/vms/cli-vm")["state"] == "running"
    assert run(capsys, world, "vm", "stop", "cli-vm", "--force")[1].startswith(
        "VM cli-vm is stopped")
    status, out, _ = run(capsys, world, "--json", "vm", "detach", "cli-vm", "host-a",
                         "0781:5567:4C530001")
    assert status == 0
    assert "0781:5567:4C530001" not in {d["id"] for d in json.loads(out)["devices"]}
    assert json.loads(out) == api(world, "/v1/vms/cli-vm")
    status, out, _ = run(capsys, world, "vm", "delete", "cli-vm")
    assert status == 0 and out.strip() == "VM cli-vm deleted"
    status, _, err = run(capsys, world, "vm", "show", "cli-vm")
    assert status == 1 and "vm_not_found, HTTP 404" in err


def test_host_and_device_admin_from_the_cli(capsys, world):
    status, out, _ = run(capsys, world, "device", "rename", "host-b", "0000:3b:00.0", "a10-left")
    assert status == 0 and columns(out)[0]["NAME"] == "a10-left"
    run(capsys, world, "device", "share", "host-b", "0000:3b:00.0")
    run(capsys, world, "device", "disable", "host-b", "0000:3b:00.0")
    device = api(world, "/v1/devices/host-b/0000:3b:00.0")
    assert (device["name"], device["shared"], device["state"]) == ("a10-left", True, "disabled")
    assert device["device_id"] == "2236"   # the CLI's MODEL column reads it
    status, out, _ = run(capsys, world, "devices", "--host", "host-b", "--type", "gpu")
    assert [row["MODEL"] for row in columns(out)] == ["10de:2236", "10de:2236"]

    status, out, _ = run(capsys, world, "host", "state", "host-b", "maintenance")
    assert status == 0 and columns(out)[0]["STATE"] == "maintenance"
    run(capsys, world, "host", "iommu", "host-b", "off")
    host = api(world, "/v1/hosts/host-b")
    assert (host["state"], host["iommu_enabled"]) == ("maintenance", False)



def test_host_remove_and_add_again_with_a_token_file(capsys, world, tmp_path):
    url = api(world, "/v1/hosts/host-b")["url"]
    status, out, err = run(capsys, world, "host", "remove", "host-b")
    assert status == 0 and out.strip() == "host host-b removed", err
    token_file = tmp_path / "agent.token"
    token_file.write_text(AGENT_TOKEN + "\n")
    status, out, err = run(capsys, world, "host", "add", url, "--token-file", str(token_file),
                           "--cluster", "gpu-b")
    assert status == 0, err
    assert (columns(out)[0]["ID"], columns(out)[0]["CLUSTER"]) == ("host-b", "gpu-b")
    assert len(api(world, "/v1/devices?host=host-b&type=gpu")["devices"]) == 2


def test_drain_puts_the_host_in_maintenance_and_stops_every_vm(capsys, world):
    for name in ("drain-1", "drain-2"):
        assert run(capsys, world, "vm", "create", name, "--vcpus", "1", "--memory-mib", "128",
                   "--host", "host-a")[0] == 0
    status, out, err = run(capsys, world, "host", "drain", "host-a")
    assert status == 0, err
    assert out.startswith("host host-a is in maintenance; 2 VM(s) stopped")
    assert {api(world, f"/v1/vms/{n}")["state"] for n in ("drain-1", "drain-2")} == {"stopped"}
    assert api(world, "/v1/hosts/host-a")["state"] == "maintenance"


def test_network_create_show_delete_from_the_cli(capsys, world):
    status, out, err = run(capsys, world, "network", "create", "pool-cli", "--type",
                           "vxlan-pool", "--vni-range", "5000-5099", "--local-cidr",
                           "10.0.0.0/8")
    assert status == 0, err
    assert api(world, "/v1/networks/pool-cli")["vni_range"] == [5000, 5099]
    status, out, _ = run(capsys, world, "--json", "network", "show", "pool-cli")
    assert json.loads(out) == api(world, "/v1/networks/pool-cli")
    assert run(capsys, world, "network", "delete", "pool-cli")[0] == 0
    assert requests.get(world + "/v1/networks/pool-cli", headers=ADMIN,
                        timeout=10).status_code == 404


def test_orphans_are_listed_adopted_and_deleted_from_the_cli(capsys, world):
    from tests.conftest import AUTH
    agents = {h["id"]: h["url"] for h in api(world, "/v1/hosts")["hosts"]}
    for name, functions in (("cli-kept", ("0000:3b:00.0", "0000:3b:00.1")), ("cli-stray", ())):
        made = requests.post(agents["host-a"] + "/v1/vms", headers=AUTH, timeout=30, json={
            "name": name, "vcpus": 1, "memory_mib": 64,
            "devices": [{"type": "pci", "id": f} for f in functions]})
        assert made.status_code == 201, made.text
    status, out, err = run(capsys, world, "orphans")
    assert status == 0, err
    listed = {row["NAME"]: row for row in columns(out)}
    assert {"cli-kept", "cli-stray"} <= set(listed)
    assert listed["cli-kept"]["DEVICES"] == "0000:3b:00.0,0000:3b:00.1"
    status, out, err = run(capsys, world, "orphan", "adopt", "host-a", "cli-kept")
    assert status == 0, err
    assert api(world, "/v1/vms/cli-kept")["host"] == "host-a"
    status, out, err = run(capsys, world, "orphan", "delete", "host-a", "cli-stray")
    assert status == 0 and "deleted" in out, err
    status, out, _ = run(capsys, world, "--json", "orphans")
    assert {o["name"] for o in json.loads(out)["orphans"]} <= {"test"}   # the driver's own
    status, _, err = run(capsys, world, "orphan", "adopt", "host-a", "cli-kept")
    assert status == 1 and "not_an_orphan" in err
    assert run(capsys, world, "vm", "delete", "cli-kept")[0] == 0


def test_gpu_ids_with_wide_or_short_domains_are_sent_not_refused(capsys, world):
    status, out, err = run(capsys, world, "schedule", "--explain", "--vcpus", "1",
                           "--memory-mib", "64", "--gpu", "10000:E1:00.0")
    assert (status, err) == (1, "") and out.startswith("not placeable on any host"), out
    status, out, err = run(capsys, world, "schedule", "--explain", "--vcpus", "1",
                           "--memory-mib", "64", "--gpu", "3b:00.0")   # 0000:3b:00.0
    assert (status, err) == (0, "") and out.startswith("placeable: "), out
    status, _, err = run(capsys, world, "schedule", "--explain", "--vcpus", "1",
                         "--memory-mib", "64", "--gpu", "100000000:e1:00.0")
    assert status == 2 and "give a PCI address" in err
