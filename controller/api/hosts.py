"""`/v1/hosts`: the host registry over HTTP; the work is in controller.hosts."""

from flask import Blueprint, jsonify

from controller import hosts
from controller.api.schemas import HostCreate, HostPatch, check_path_ids
from controller.services import require_admin
from hostplane.api import describe, parse_body

bp = Blueprint("hosts", __name__)
check_path_ids(bp)


@bp.post("/v1/hosts")
@describe("Register an agent by URL and token; the controller asks it who it is",
          body=HostCreate, responses=(201, 400, 409, 503), tags=["hosts"])
def register():
    require_admin("registering hosts")
    return jsonify(hosts.register(parse_body(HostCreate))), 201


@bp.get("/v1/hosts")
@describe("Every host with its status, admin state and capacity", tags=["hosts"])
def listing():
    return jsonify({"hosts": hosts.listing()})


@bp.get("/v1/hosts/<host_id>")
@describe("One host: status, capacity, IOMMU and its NUMA nodes (numa_nodes: id, cpus, "
          "memory_mib, as its agent reports them)", tags=["hosts"])
def show(host_id):
    return jsonify(hosts.get(host_id))


@bp.patch("/v1/hosts/<host_id>")
@describe("Change admin state (enabled/disabled/maintenance), IOMMU switch or cluster",
          body=HostPatch, tags=["hosts"])
def patch(host_id):
    require_admin("changing hosts")
    return jsonify(hosts.change(host_id, parse_body(HostPatch)))


@bp.delete("/v1/hosts/<host_id>")
@describe("Forget a host that runs no VMs known to the controller", responses=(204, 409),
          tags=["hosts"])
def delete(host_id):
    require_admin("removing hosts")
    hosts.forget(host_id)
    return "", 204
