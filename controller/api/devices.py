"""`/v1/devices`: the cluster's device inventory over HTTP; the work is in controller.devices."""

from flask import Blueprint, jsonify, request

from controller import devices
from controller.api.schemas import DevicePatch, check_path_ids
from controller.services import require_admin
from hostplane.api import describe, parse_body
from hostplane.errors import BadRequest

bp = Blueprint("devices", __name__)
check_path_ids(bp)
FILTERS = {"host": "host id", "cluster": "cluster name", "type": "gpu, gpu-audio, nic, usb, ...",
           "status": "ready, attached, not_assignable or unavailable", "kind": "pci or usb",
           "pool": "device pool name"}


@bp.get("/v1/devices")
@describe("Every device of every host (tenants: the shared ones)", query=FILTERS,
          tags=["devices"])
def listing():
    unknown = set(request.args) - set(FILTERS)
    if unknown:
        raise BadRequest(f"unknown filter {sorted(unknown)[0]}", code="invalid_filter",
                         details={"filters": sorted(FILTERS)})
    return jsonify({"devices": devices.listing(**{name: request.args.get(name)
                                                  for name in FILTERS})})


@bp.get("/v1/devices/<host_id>/<path:device_id>")
@describe("One device", tags=["devices"])
def show(host_id, device_id):
    return jsonify(devices.get(host_id, device_id))


@bp.patch("/v1/devices/<host_id>/<path:device_id>")
@describe("Enable/disable, rename or share a device", body=DevicePatch, tags=["devices"])
def patch(host_id, device_id):
    require_admin("changing devices")
    return jsonify(devices.change(host_id, device_id, parse_body(DevicePatch)))


@bp.delete("/v1/devices/<host_id>/<path:device_id>")
@describe("Forget a device that is unavailable", responses=(204, 409), tags=["devices"])
def delete(host_id, device_id):
    require_admin("removing devices")
    devices.forget(host_id, device_id)
    return "", 204
