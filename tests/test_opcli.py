"""The `hostplane` operator CLI against a real controller serving two real agents.

The agents serve synthetic sysfs trees through the controller slice's loopback helpers
(host-a: two 10de:1eb8 GPUs, host-b: two 10de:2236; one USB stick each).
"""

import io
import json
import os
import subprocess
import time

import pytest
import requests

from controller import opcli
from tests.test_controller_support import ADMIN, ADMIN_TOKEN, Served, needs_agent_vm_api, \
    two_host_world
from tests.test_ops_helpers import free_port

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
    expected = api(world, "/v1/schedule/explain", "POST", json={
        "name": "explain-probe", "vcpus": 2, "memory_mib": 1024,
        "gpus": [{"vendor_id": "10de", "device_id": "1eb8", "count": 3}]})["rejected"]
    rejected = columns(out.split("rejected:\n", 1)[1])
    assert [(row["HOST"], row["REASON"]) for row in rejected] == \
        [(host, reason) for host in sorted(expected) for reason in expected[host]]

    status, out, _ = run(capsys, world, "schedule", "--explain", "--vcpus", "2",
                         "--memory-mib", "1024", "--gpu", "10de:2236x2")
    assert status == 0 and out.startswith("placeable: host-b would be chosen")


def test_schedule_creates_a_vm_that_vms_then_lists(capsys, world):
    needs_agent_vm_api()
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
    if requests.get(world + "/v1/networks", headers=ADMIN, timeout=10).status_code == 404:
        pytest.skip("the controller has no /v1/networks yet (networks slice not in the tree)")
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
    result = subprocess.run([os.path.join(REPO, ".venv/bin/hostplane"), "--json", "hosts"],
                            env=environ, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [h["id"] for h in json.loads(result.stdout)["hosts"]] == ["host-a", "host-b"]


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
