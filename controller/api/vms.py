"""VMs: placed by the scheduler, claimed atomically, created by the chosen host's agent."""

from flask import Blueprint, jsonify

from controller import vms
from controller.api.schemas import check_path_ids, VmCreate, VmDevicesAdd, VmStop
from controller.services import require_admin
from hostplane.api import describe, parse_body

bp = Blueprint("vms", __name__)
check_path_ids(bp, "VM name")


@bp.post("/v1/vms")
@describe("Place, claim devices and capacity, create on the chosen host; 422 when it fits "
          "nowhere, with details.hosts {host: [sentence]} and details.reasons "
          "{host: [{code, message}]}", body=VmCreate,
          responses=(201, 403, 404, 409, 422, 503), tags=["vms"])
def create():
    body = parse_body(VmCreate)
    if body.usb:
        require_admin("USB passthrough")
    return jsonify(vms.create(body)), 201


@bp.get("/v1/vms")
@describe("Every VM (tenants: their own)", tags=["vms"])
def listing():
    return jsonify({"vms": vms.listing()})


@bp.get("/v1/vms/<name>")
@describe("One VM with the devices it holds", tags=["vms"])
def show(name):
    return jsonify(vms.get(name))


@bp.delete("/v1/vms/<name>")
@describe("Delete on the agent, then give its devices and room back", responses=(204, 503),
          tags=["vms"])
def delete(name):
    vms.delete(name)
    return "", 204


@bp.post("/v1/vms/<name>/start")
@describe("Start (its reservation was kept while stopped)", responses=(200, 503), tags=["vms"])
def start(name):
    return jsonify(vms.start(name))


@bp.post("/v1/vms/<name>/stop")
@describe("Stop; devices and capacity stay reserved", body=VmStop, responses=(200, 503),
          tags=["vms"])
def stop(name):
    return jsonify(vms.stop(name, parse_body(VmStop, allow_empty=True).force))


@bp.post("/v1/vms/<name>/devices")
@describe("Attach more devices (a running VM: only from its own host); 409 when the VM "
          "cannot take them, with details.hosts and details.reasons as for a create",
          body=VmDevicesAdd,
          responses=(200, 403, 404, 409, 422, 503), tags=["vms"])
def add_devices(name):
    body = parse_body(VmDevicesAdd)
    if body.usb:
        require_admin("USB passthrough")
    return jsonify(vms.add_devices(name, body))


@bp.delete("/v1/vms/<name>/devices/<host_id>/<path:device_id>")
@describe("Detach a device (and the functions of its IOMMU group claimed with it)",
          responses=(200, 503), tags=["vms"])
def remove_device(name, host_id, device_id):
    return jsonify(vms.remove_device(name, host_id, device_id))
