"""The agent's side of "claims never leak", on a real libvirtd (qemu:///system).

The controller passes each create an operation id. The agent records it in the domain's
own metadata (libvirt's XML stays the truth), answers a repeat of the same create with
the VM it made, and a delete naming the id cancels that create for good: a request of it
still queued behind the host lock can never define the VM afterwards.
"""

import uuid

from tests.conftest import AUTH
from tests.test_virt_support import agent_client, lv, prefix  # noqa: F401


def _create(client, name, op_id, **extra):
    return client.post("/v1/vms", headers=AUTH, json={
        "name": name, "vcpus": 1, "memory_mib": 64, "op_id": op_id, **extra})


def test_a_repeated_create_answers_the_vm_it_made_and_libvirt_keeps_the_id(tmp_path, lv, prefix):  # noqa: F811
    name, op_id = f"{prefix}-op", uuid.uuid4().hex
    with agent_client(tmp_path) as (client, _):
        first = _create(client, name, op_id)
        assert first.status_code == 201 and first.get_json()["op_id"] == op_id
        assert op_id in lv.lookupByName(name).XMLDesc(0)   # in the domain's own metadata
        again = _create(client, name, op_id)
        assert again.status_code == 200 and again.get_json()["uuid"] == first.get_json()["uuid"]
        other = _create(client, name, uuid.uuid4().hex)
        assert other.status_code == 409 and other.get_json()["error"]["code"] == "vm_exists"
        assert client.get(f"/v1/vms/{name}", headers=AUTH).get_json()["op_id"] == op_id
        assert client.delete(f"/v1/vms/{name}?op_id={op_id}", headers=AUTH).status_code == 204


def test_a_cancelled_create_is_refused_when_it_arrives_late(tmp_path, lv, prefix):  # noqa: F811
    name, op_id = f"{prefix}-late", uuid.uuid4().hex
    with agent_client(tmp_path) as (client, _):
        # the controller gave up on it: the VM is not there, the cancel is recorded
        assert client.delete(f"/v1/vms/{name}?op_id={op_id}", headers=AUTH).status_code == 404
        late = _create(client, name, op_id)
        assert late.status_code == 409
        assert late.get_json()["error"]["code"] == "operation_cancelled"
        assert name not in [d.name() for d in lv.listAllDomains()]
        # the name itself stays free for a new operation
        fresh = _create(client, name, uuid.uuid4().hex)
        assert fresh.status_code == 201
        assert client.delete(f"/v1/vms/{name}", headers=AUTH).status_code == 204


def test_a_delete_for_another_operation_leaves_the_vm_alone(tmp_path, lv, prefix):  # noqa: F811
    name, op_id = f"{prefix}-reuse", uuid.uuid4().hex
    with agent_client(tmp_path) as (client, _):
        assert _create(client, name, op_id).status_code == 201
        stale = client.delete(f"/v1/vms/{name}?op_id={uuid.uuid4().hex}", headers=AUTH)
        assert stale.status_code == 409 and stale.get_json()["error"]["code"] == "vm_changed"
        assert name in [d.name() for d in lv.listAllDomains()]
        bad = client.delete(f"/v1/vms/{name}?op_id=not-an-id", headers=AUTH)
        assert bad.status_code == 400
        assert client.delete(f"/v1/vms/{name}?op_id={op_id}", headers=AUTH).status_code == 204
        assert name not in [d.name() for d in lv.listAllDomains()]
