"""Device pools: named kinds of PCI device, shared with tenants up to a count (HTTP only;
the work is controller.pools)."""

from flask import Blueprint, jsonify

from controller import pools
from controller.api.schemas import (DevicePoolCreate, DevicePoolPatch, DevicePoolShare,
                                    check_path_ids)
from hostplane.api import describe, parse_body

bp = Blueprint("pools", __name__)
check_path_ids(bp, "pool name")


@bp.get("/v1/device-pools")
@describe("Every device pool with size, free, attached, unavailable, per host too "
          "(tenants: the pools shared with them, with their quota)", tags=["device-pools"])
def listing():
    return jsonify({"pools": pools.listing()})


@bp.post("/v1/device-pools")
@describe("Define a pool by a match (a match naming no device is kept, with a warning); "
          "409 pool_overlap when it could share a device with another pool",
          body=DevicePoolCreate, responses=(201, 403, 409), tags=["device-pools"])
def create():
    return jsonify(pools.create(parse_body(DevicePoolCreate))), 201


@bp.get("/v1/device-pools/<name>")
@describe("One device pool with its counts", responses=(200, 404), tags=["device-pools"])
def show(name):
    return jsonify(pools.get(name))


@bp.patch("/v1/device-pools/<name>")
@describe("Change a pool's match (checked for overlap again)", body=DevicePoolPatch,
          responses=(200, 403, 404, 409), tags=["device-pools"])
def patch(name):
    return jsonify(pools.patch(name, parse_body(DevicePoolPatch)))


@bp.delete("/v1/device-pools/<name>")
@describe("Delete a pool; 409 pool_in_use listing the VMs while any device of it is "
          "attached", responses=(204, 403, 404, 409), tags=["device-pools"])
def delete(name):
    pools.delete(name)
    return "", 204


@bp.put("/v1/device-pools/<name>/shares/<tenant>")
@describe("Share a pool with a tenant, or change its quota (devices its VMs may hold)",
          body=DevicePoolShare, responses=(200, 403, 404), tags=["device-pools"])
def share(name, tenant):
    return jsonify(pools.share(name, tenant, parse_body(DevicePoolShare).max_count))


@bp.delete("/v1/device-pools/<name>/shares/<tenant>")
@describe("Stop sharing a pool with a tenant (what its VMs hold stays)",
          responses=(204, 403, 404), tags=["device-pools"])
def unshare(name, tenant):
    pools.unshare(name, tenant)
    return "", 204
