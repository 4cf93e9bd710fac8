"""`/v1/devices`: the cluster's device inventory over HTTP; the work is in controller.devices."""

from flask import Blueprint, jsonify, request

from controller import devices
from controller.api.schemas import DevicePatch, check_path_ids
from controller.services import require_admin
from hostplane.api import describe, parse_body
from hostplane.core.device_states import ATTACHED, NOT_ASSIGNABLE, READY, UNAVAILABLE
from hostplane.core.ids import InvalidId, check_host_id, check_name
from hostplane.core.pci import PCI_TYPES
from hostplane.errors import BadRequest

bp = Blueprint("devices", __name__)
check_path_ids(bp)
FILTERS = {"host": "host id", "cluster": "cluster name", "type": "gpu, gpu-audio, nic, usb, ...",
           "status": "ready, attached, not_assignable or unavailable", "kind": "pci or usb",
           "pool": "device pool name"}


def _one_of(values):
    def check(text):
        if text not in values:
            raise InvalidId(f"must be one of {', '.join(values)}")
    return check


# a filter value that can never match is a mistake worth saying, not an empty list
FILTER_CHECKS = {"host": check_host_id, "cluster": check_name, "pool": check_name,
                 "type": _one_of(PCI_TYPES + ("usb",)), "kind": _one_of(("pci", "usb")),
                 "status": _one_of((READY, ATTACHED, NOT_ASSIGNABLE, UNAVAILABLE))}


@bp.get("/v1/devices")
@describe("Every device of every host (tenants: the shared ones)", query=FILTERS,
          tags=["devices"])
def listing():
    unknown = set(request.args) - set(FILTERS)
    if unknown:
        raise BadRequest(f"unknown filter {sorted(unknown)[0]}", code="invalid_filter",
                         details={"filters": sorted(FILTERS)})
    for name, value in request.args.items():
        try:
            FILTER_CHECKS[name](value)
        except InvalidId as exc:
            raise BadRequest(f"filter {name}={value[:80]!r}: {exc}", code="invalid_filter",
                             details={"filter": name}) from None
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
