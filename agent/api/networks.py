"""Host networks: bridges on a NIC, a VLAN or a VXLAN, put idempotently by name."""

from flask import Blueprint, jsonify

from agent.services import current_agent
from hostplane.api import checked, describe, parse_body
from hostplane.core.ids import check_name
from hostplane.core.networks import DesiredNetwork
from hostplane.errors import DependencyDown

bp = Blueprint("networks", __name__)


@bp.get("/v1/networks")
@describe("Networks on this host: the desired set and what is built (found by alias)",
          tags=["networks"])
def list_networks():
    return jsonify({"networks": _networks().list()})


@bp.get("/v1/networks/<name>")
@describe("One network: its desired state, interfaces, VXLAN peers and status", tags=["networks"])
def get_network(name):
    return jsonify(_networks().get(_valid_name(name)))


@bp.put("/v1/networks/<name>")
@describe("Build or update a network; the same state twice changes nothing",
          body=DesiredNetwork, responses=(200, 201, 409, 501, 503), tags=["networks"])
def put_network(name):
    name = _valid_name(name)
    spec = parse_body(DesiredNetwork).root
    view, created = _networks().apply(name, spec)
    return jsonify(view), 201 if created else 200


@bp.delete("/v1/networks/<name>")
@describe("Remove the interfaces built for a network (only those carrying its alias)",
          tags=["networks"])
def delete_network(name):
    return jsonify(_networks().delete(_valid_name(name)))


def _valid_name(name):
    return checked(check_name, name, "network name", code="invalid_name")


def _networks():
    networks = current_agent().networks
    if networks is None:
        raise DependencyDown("the network adapter is not started", code="networks_unavailable")
    return networks
