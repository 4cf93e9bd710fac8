"""L2 networks: create (admin), list, show with per-host apply status, delete.

Bodies are validated with the agent's own models from `hostplane.core.networks`, so the
controller refuses (400, nothing stored) exactly what every agent would refuse.
"""

import ipaddress
from typing import Annotated, Literal, Optional, Union

from flask import Blueprint, jsonify
from pydantic import (BaseModel, ConfigDict, Field, RootModel, StrictInt, ValidationError,
                      ValidationInfo, field_validator)

from controller import networks
from controller.api.schemas import check_path_ids
from controller.services import current, require_admin
from hostplane.api import describe, parse_body
from hostplane.core.ids import check_name
from hostplane.core.networks import VXLAN_PORT, NovlanSpec, VlanSpec, VxlanSpec
from hostplane.errors import BadRequest

bp = Blueprint("networks", __name__)
check_path_ids(bp, "network name")


class _Named(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    clusters: list[str] = Field(default_factory=list, max_length=64,
                                description="clusters whose hosts get the network")

    @field_validator("name")
    @classmethod
    def _name(cls, value):
        return check_name(value, "network name")

    @field_validator("clusters")
    @classmethod
    def _clusters(cls, value):
        if len(set(value)) != len(value):
            raise ValueError("clusters must not repeat a name")
        return [check_name(cluster, "cluster") for cluster in value]

    def fields(self):
        """What is stored as the network's spec: the kind's own fields."""
        return self.model_dump(exclude={"name", "clusters", "type"}, exclude_none=True)


class NovlanCreate(NovlanSpec, _Named):
    """A bridge on a NIC, on every host of the clusters."""


class VlanCreate(VlanSpec, _Named):
    """A bridge on the NIC's 802.1Q sub-interface, on every host of the clusters."""


class PoolCreate(_Named):
    """A range of VNIs and the underlay VXLAN networks of it use; never pushed itself."""
    type: Literal["vxlan-pool"]
    vni_range: tuple[StrictInt, StrictInt] = Field(description="[first, last] VNI")
    local_cidr: str = Field(description="hosts' VTEP addresses lie in this CIDR")
    port: StrictInt = VXLAN_PORT
    vteps: dict[str, str] = Field(default_factory=dict, description=(
        "host id -> VTEP address, for hosts whose registered URL is not in local_cidr"))

    @field_validator("vni_range")
    @classmethod
    def _range(cls, value):
        start, end = (_core_vxlan_field("vni", vni) for vni in value)
        if start > end:
            raise ValueError("vni_range must be [first, last] with first <= last")
        return start, end

    @field_validator("local_cidr", "port")
    @classmethod
    def _core(cls, value, info: ValidationInfo):
        return _core_vxlan_field(info.field_name, value)

    @field_validator("vteps")
    @classmethod
    def _vteps(cls, value, info: ValidationInfo):
        return _checked_vteps(value, info.data.get("local_cidr"))


class VxlanCreate(_Named):
    """A VXLAN network from a pool; the VNI is the pool's lowest free one unless given."""
    type: Literal["vxlan"]
    pool: str
    vni: Optional[StrictInt] = None
    mtu: Optional[StrictInt] = None

    @field_validator("pool")
    @classmethod
    def _pool(cls, value):
        return check_name(value, "pool name")

    @field_validator("vni", "mtu")
    @classmethod
    def _core(cls, value, info: ValidationInfo):
        return None if value is None else _core_vxlan_field(info.field_name, value)

    def fields(self):
        return self.model_dump(exclude={"name", "clusters", "type", "vni"}, exclude_none=True)


class VtepsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vteps: dict[str, str]


KINDS = {"novlan": NovlanCreate, "vlan": VlanCreate, "vxlan-pool": PoolCreate,
         "vxlan": VxlanCreate}


class NetworkCreate(RootModel[Annotated[Union[tuple(KINDS.values())],
                                        Field(discriminator="type")]]):
    """One of the kinds, chosen by `type` (named, so OpenAPI gets a legal component name)."""


@bp.post("/v1/networks")
@describe("Create a network (admin) and push it to the connected hosts of its clusters",
          body=NetworkCreate, responses=(201, 403, 409), tags=["networks"])
def create():
    require_admin("creating networks")
    body = parse_body(_kind_model)
    ctl = current()
    name = networks.create(ctl.db, body)
    networks.push(ctl.db, names=[name], **ctl.network_agents())
    return _show(name), 201


@bp.get("/v1/networks")
@describe("Every network, with per-host apply status", tags=["networks"])
def listing():
    with current().db.read() as session:
        return jsonify({"networks": networks.render_all(session)})


@bp.get("/v1/networks/<name>")
@describe("One network: applied / failed (with the agent's error) / pending per host",
          tags=["networks"])
def show(name):
    return _show(name)


@bp.patch("/v1/networks/<name>")
@describe("Set a VXLAN pool's per-host VTEP addresses (admin); its networks are pushed again",
          body=VtepsPatch, responses=(200, 403), tags=["networks"])
def patch(name):
    require_admin("changing networks")
    body = parse_body(VtepsPatch)
    ctl = current()
    with ctl.db.read() as session:
        pool = networks.render_one(session, name)
    if pool["type"] != networks.POOL:
        raise BadRequest(f"vteps: network {name} is not a {networks.POOL}",
                         code="invalid_request")
    try:
        vteps = _checked_vteps(body.vteps, pool.get("local_cidr"))
    except ValueError as exc:
        raise BadRequest(f"vteps: {exc}", code="invalid_request") from None
    users = networks.set_vteps(ctl.db, name, vteps)
    networks.push(ctl.db, names=users, **ctl.network_agents())
    return _show(name)


@bp.delete("/v1/networks/<name>")
@describe("Delete a network and remove it from every host (a pool only when unused)",
          responses=(200, 403, 409), tags=["networks"])
def delete(name):
    require_admin("deleting networks")
    ctl = current()
    hosts = networks.delete(ctl.db, name=name, **ctl.network_agents())
    return jsonify({"name": name, "hosts": hosts})


# --- helpers ---------------------------------------------------------------------------

def _kind_model(data):
    """The body's model by its `type` (parse_body has checked the body itself)."""
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in KINDS:
        raise BadRequest(f"type: must be one of {', '.join(KINDS)}", code="invalid_request",
                         details={"errors": [{"field": "type", "problem": "unknown kind"}]})
    return KINDS[kind]


def _show(name):
    with current().db.read() as session:
        return jsonify(networks.render_one(session, name))


def _core_vxlan_field(field, value):
    """`value` judged by the core's VXLAN rules for `field`: the agent's very messages."""
    try:
        spec = VxlanSpec(**{"type": "vxlan", "vni": 1, "local_cidr": "0.0.0.0/0", field: value})
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    return getattr(spec, field)


def _checked_vteps(vteps, local_cidr):
    if local_cidr is None:
        raise ValueError("vteps need a valid local_cidr")
    network = ipaddress.ip_network(local_cidr)
    checked = {}
    for host_id, address in vteps.items():
        if not 0 < len(host_id) <= 128:
            raise ValueError("host ids are 1-128 characters")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} (host {host_id}) is not an IP address") from None
        if ip not in network:
            raise ValueError(f"{address} (host {host_id}) is not inside {local_cidr}")
        checked[host_id] = str(ip)
    return checked
