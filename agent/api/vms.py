"""VMs and their passthrough devices; every answer is read back from libvirt's domain XML."""

from typing import Literal

from flask import Blueprint, jsonify, request
from pydantic import Field, field_validator, model_validator

from agent.services import current_agent
from agent.virt import attach as attaching
from hostplane.api import checked, describe, parse_body
from hostplane.bodies import StrictBody, VmBasics, VmStop
from hostplane.core.ids import (OPERATION_ID, check_name, check_operation_id, device_kind_and_id,
                                normalize_pci_address, normalize_usb_id)
from hostplane.errors import DependencyDown

bp = Blueprint("vms", __name__)


class DeviceRef(StrictBody):
    type: Literal["pci", "usb"]
    id: str = Field(max_length=200)


class DiskBody(StrictBody):
    """An image in the agent's storage directory (`[libvirt] storage_dir`), by absolute
    path or by name, or a new one of `size_mib` that the agent creates there."""
    path: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_./+-]{1,1023}$")
    size_mib: int | None = Field(default=None, ge=1, le=16 * 1024 * 1024)
    format: Literal["qcow2", "raw"] = "qcow2"

    @field_validator("path")
    @classmethod
    def _no_parent(cls, value):
        if value is not None and ".." in value.split("/"):
            raise ValueError("disk path must not contain '..'")
        return value

    @model_validator(mode="after")
    def _path_or_size(self):
        if (self.path is None) == (self.size_mib is None):
            raise ValueError("give a disk either a path or a size_mib")
        return self


class VmCreate(VmBasics):
    disks: list[DiskBody] = Field(default_factory=list, max_length=16)
    devices: list[DeviceRef] = Field(default_factory=list, max_length=32)
    start: bool = False
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    # Pin vCPUs to this host NUMA node's CPUs and take memory from it only (GET /v1/host
    # lists the nodes); 409 when the host has no such node or it cannot hold the VM.
    numa_node: int | None = Field(default=None, ge=0, le=1023)
    # The controller's id of this create: a retry of it answers the VM it made (200).
    op_id: str | None = Field(default=None, pattern=OPERATION_ID.pattern)


class StopBody(VmStop):
    timeout_s: float | None = Field(default=None, ge=0, le=3600)


class OperationBody(StrictBody):
    op_id: str = Field(pattern=OPERATION_ID.pattern)
    expected: str | None = Field(default=None, pattern=OPERATION_ID.pattern)


class AttachBody(DeviceRef):
    live: bool | None = None
    persistent: bool = True
    with_group: bool = False


@bp.get("/v1/vms")
@describe("Every VM on this host with state and passthrough devices", responses=(200, 503),
          tags=["vms"])
def list_vms():
    return jsonify({"vms": _virt().list_vms()})


@bp.post("/v1/vms")
@describe("Define a VM (q35, SeaBIOS), with devices checked like attaches; optionally start "
          "it. With numa_node, its vCPUs and memory are pinned to that host NUMA node "
          "(409 numa_node_not_found / numa_node_too_small otherwise). With op_id, a repeat of the same create answers 200 with the VM it made, and "
          "a create the controller cancelled is refused (409 operation_cancelled)",
          body=VmCreate, responses=(200, 201, 409, 503), tags=["vms"])
def create_vm():
    body = parse_body(VmCreate)
    spec = body.model_dump()
    spec["devices"] = [{"type": d.type, "id": _device_id(d.type, d.id)} for d in body.devices]
    view, created = _virt().create(spec)
    return jsonify(view), 201 if created else 200


@bp.get("/v1/vms/<name>")
@describe("One VM: state and devices from its live and persistent domain XML",
          responses=(200, 503), tags=["vms"])
def get_vm(name):
    virt = _virt()
    return jsonify(virt.vm_view(virt.domain(_name(name))))


@bp.post("/v1/vms/<name>/start")
@describe("Start a VM (already running: no change)", responses=(200, 409, 503), tags=["vms"])
def start_vm(name):
    return jsonify(_virt().start_vm(_name(name)))


@bp.post("/v1/vms/<name>/stop")
@describe("Stop a VM: ACPI shutdown waited for timeout_s, or destroy with force",
          body=StopBody, responses=(200, 409, 503), tags=["vms"])
def stop_vm(name):
    name = _name(name)
    body = parse_body(StopBody, allow_empty=True)
    return jsonify(_virt().stop_vm(name, body.force, body.timeout_s))


@bp.delete("/v1/vms/<name>")
@describe("Destroy and undefine a VM (with its snapshot/NVRAM/managed-save metadata); disk "
          "files in the storage directory are removed only with ?delete_storage=true",
          responses=(204, 409, 503),
          query={"delete_storage": "true to delete the VM's disk files",
                 "op_id": "the create operation that made the VM: cancels it for good, and "
                          "a VM made by another operation is left alone (409 vm_changed)"},
          tags=["vms"])
def delete_vm(name):
    name = _name(name)
    delete_storage = request.args.get("delete_storage", "false").lower() in ("1", "true", "yes")
    op_id = request.args.get("op_id")
    if op_id is not None:
        op_id = checked(check_operation_id, op_id)
    _virt().delete_vm(name, delete_storage, op_id)
    return "", 204


@bp.put("/v1/vms/<name>/operation")
@describe("Record the controller's operation id in a domain it did not make, if the domain "
          "still carries `expected` (null: none); 409 vm_changed otherwise",
          body=OperationBody, responses=(200, 409, 503), tags=["vms"])
def claim_domain(name):
    name = _name(name)
    body = parse_body(OperationBody)
    return jsonify(_virt().claim_domain(name, body.op_id, body.expected))


@bp.post("/v1/vms/<name>/devices")
@describe("Attach a PCI or USB device (live if running, persistent always; with_group takes "
          "every endpoint of the PCI device's IOMMU group)", body=AttachBody,
          responses=(200, 409, 503), tags=["vms"])
def attach_device(name):
    name = _name(name)
    body = parse_body(AttachBody)
    return jsonify(attaching.attach(_virt(), name, body.type, _device_id(body.type, body.id),
                                    body.live, body.persistent, body.with_group))


@bp.delete("/v1/vms/<name>/devices/<path:device_id>")
@describe("Detach a device: live (waits for libvirt's device-removed event), then persistent",
          responses=(200, 409, 503), tags=["vms"])
def detach_device(name, device_id):
    name = _name(name)
    kind, device_id = checked(device_kind_and_id, device_id)
    return jsonify(attaching.detach(_virt(), name, kind, device_id))


def _virt():
    virt = current_agent().virt
    if virt is None:
        raise DependencyDown("the libvirt adapter is not running on this agent",
                             code="dependency_unavailable")
    return virt


def _name(name):
    return checked(check_name, name, "VM name", code="invalid_name")


def _device_id(kind, device_id):
    return checked(normalize_pci_address if kind == "pci" else normalize_usb_id, device_id)
