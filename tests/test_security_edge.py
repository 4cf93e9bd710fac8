"""Findings of the security review (F2, F3 in README), each pinned by what an operator
expects now that it is fixed: a name with a trailing newline is refused, and a disk
outside the agent's storage directory is refused rather than deleted with the VM.
"""

import pytest

from agent.app import create_app
from hostplane.core.ids import InvalidId, check_name
from tests.conftest import AUTH, agent_config
from tests.hosts import small_gpu_host
from tests.synthetic import write_proc, write_sysfs_tree


@pytest.fixture
def client(tmp_path):
    host = small_gpu_host()
    config = agent_config(tmp_path, libvirt={"uri": "test:///default"}, host={
        "sysfs_root": write_sysfs_tree(host, tmp_path / "sys"),
        "proc_root": write_proc(str(tmp_path / "proc"), host)})
    app = create_app(config)
    yield app.test_client()
    app.extensions["hostplane_agent"].close()


def test_a_trailing_newline_is_not_part_of_a_valid_name():
    with pytest.raises(InvalidId):
        check_name("vm1\n")


def test_a_vm_name_with_a_newline_is_refused_at_the_edge(client):
    answer = client.get("/v1/vms/vm1%0A", headers=AUTH)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "invalid_name"


def test_deleting_a_vm_leaves_files_outside_the_agents_storage_alone(client, tmp_path):
    precious = tmp_path / "precious.img"
    precious.write_text("the operator's data")
    made = client.post("/v1/vms", headers=AUTH, json={
        "name": "sec-disk", "vcpus": 1, "memory_mib": 64, "disks": [{"path": str(precious)}]})
    if made.status_code == 201:  # accepted: at least it must not be deleted with the VM
        client.delete("/v1/vms/sec-disk?delete_storage=true", headers=AUTH)
    else:
        assert made.status_code == 400
    assert precious.exists() and made.status_code == 400
