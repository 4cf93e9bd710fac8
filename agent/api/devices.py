"""The device inventory: cheap to poll (ETag/304), exact per device."""

from flask import Blueprint, Response, jsonify, request

from agent.services import current_agent
from hostplane.api import checked, describe
from hostplane.core.ids import normalize_pci_address, normalize_usb_id
from hostplane.errors import NotFound

bp = Blueprint("devices", __name__)


@bp.get("/v1/devices")
@describe("Every PCI and USB device, plus `errors` (functions the tree lists but that "
          "could not be read); send If-None-Match with the last ETag to get 304",
          responses=(200, 304), tags=["devices"])
def devices():
    body, generation, etag = current_agent().inventory.body()
    if etag in _etags(request.headers.get("If-None-Match", "")):
        response = Response(status=304)
    else:
        response = Response(body, mimetype="application/json")
    response.headers["ETag"] = etag
    response.headers["X-Generation"] = str(generation)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/v1/devices/pci/<path:device_id>")
@describe("One PCI function by full address (0000:01:00.0, 10000:e1:00.0; a short 01:00.0 "
          "is domain 0000): type, NUMA node, upstream chain, PCIe link, host_use, "
          "assignable and not_assignable_reason", tags=["devices"])
def pci_device(device_id):
    address = checked(normalize_pci_address, device_id)
    device = current_agent().inventory.pci(address)
    if device is None:
        raise NotFound(f"no PCI device {address} on this host", code="device_not_found")
    return jsonify(device)


@bp.get("/v1/devices/usb/<path:device_id>")
@describe("One USB device by id (vid:pid:serial or vid:pid@port)", tags=["devices"])
def usb_device(device_id):
    usb_id = checked(normalize_usb_id, device_id)
    device = current_agent().inventory.usb(usb_id)
    if device is None:
        raise NotFound(f"no USB device {usb_id} on this host", code="device_not_found")
    return jsonify(device)


@bp.get("/v1/iommu-groups")
@describe("IOMMU groups with their members, viability and holders", tags=["devices"])
def iommu_groups():
    return jsonify({"groups": current_agent().inventory.iommu_groups()})




def _etags(header):
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
