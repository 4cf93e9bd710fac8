"""Host L2 networks as data: desired states, the interface names they give, and the plan.

Three kinds, as in ZStack: a bridge on a NIC (novlan), on a VLAN sub-interface of a NIC
(vlan), or on a VXLAN device flooding to unicast peers (vxlan). Names are derived, never
chosen, so every host of a cluster builds the same bridge for the same network; every
interface the agent builds carries an alias naming its network, so only the agent's own
are ever changed or deleted. The controller validates with the same models.
"""

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, RootModel, StrictInt, field_validator,
                      model_validator)

IFNAMSIZ = 15               # Linux interface names: at most 15 bytes
VLAN_RANGE = (1, 4094)
VNI_RANGE = (1, 16777214)
VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50         # outer Ethernet + IPv4 + UDP + VXLAN headers
ALIAS_PREFIX = "hostplane:net="
ZERO_MAC = "00:00:00:00:00:00"  # the FDB entry that floods BUM traffic to one peer
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class InvalidNetwork(ValueError):
    """A desired state this host can never build (bad field, no such NIC); the edge answers 400."""


def check_ifname(text, what="interface"):
    """A Linux interface name, or InvalidNetwork saying why not."""
    if not isinstance(text, str) or not text:
        raise InvalidNetwork(f"{what} name must be a non-empty string")
    if len(text.encode()) > IFNAMSIZ:
        raise InvalidNetwork(f"{what} name {text[:40]!r} is longer than {IFNAMSIZ} characters "
                             "(the Linux limit)")
    if not _IFNAME.fullmatch(text) or text in (".", ".."):
        raise InvalidNetwork(f"{what} name {text!r} may hold only letters, digits, '_', '.', '-'")
    return text


def _in_range(value, bounds, what):
    low, high = bounds
    if not low <= value <= high:
        raise ValueError(f"{what} must be {low}-{high} (got {value})")
    return value


def _ifname_field(value):
    try:
        return check_ifname(value)
    except InvalidNetwork as exc:
        raise ValueError(str(exc)) from None


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mtu: Optional[StrictInt] = Field(None, description="MTU of the built interfaces")

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, value):
        return value if value is None else _in_range(value, (68, 65535), "mtu")


class NovlanSpec(_Spec):
    """A bridge with the NIC itself as its port."""
    type: Literal["novlan"]
    interface: str = Field(description="the physical NIC, e.g. eth1")
    _interface = field_validator("interface")(_ifname_field)


class VlanSpec(_Spec):
    """A bridge on the NIC's 802.1Q sub-interface."""
    type: Literal["vlan"]
    interface: str
    vlan: StrictInt = Field(description="VLAN id, 1-4094")
    _interface = field_validator("interface")(_ifname_field)

    @field_validator("vlan")
    @classmethod
    def _vlan(cls, value):
        return _in_range(value, VLAN_RANGE, "vlan")


class VxlanSpec(_Spec):
    """A bridge on a VXLAN device; the VTEP address comes from local_ip or local_cidr."""
    type: Literal["vxlan"]
    vni: StrictInt = Field(description="VXLAN network id, 1-16777214")
    local_cidr: Optional[str] = Field(None, description="use the host address inside this CIDR")
    local_ip: Optional[str] = None
    peers: list[str] = Field(default_factory=list, description="unicast VTEPs to flood to")
    port: StrictInt = VXLAN_PORT

    @field_validator("vni")
    @classmethod
    def _vni(cls, value):
        return _in_range(value, VNI_RANGE, "vni")

    @field_validator("port")
    @classmethod
    def _port(cls, value):
        return _in_range(value, (1, 65535), "port")

    @field_validator("local_cidr")
    @classmethod
    def _cidr(cls, value):
        if value is None:
            return None
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR like 10.0.0.0/8") from None

    @field_validator("local_ip")
    @classmethod
    def _local_ip(cls, value):
        return None if value is None else _address(value)

    @field_validator("peers")
    @classmethod
    def _peers(cls, value):
        peers = [_address(peer) for peer in value]
        if len(set(peers)) != len(peers):
            raise ValueError("peers must not repeat an address")
        return peers

    @model_validator(mode="after")
    def _one_vtep_source(self):
        if (self.local_cidr is None) == (self.local_ip is None):
            raise ValueError("give exactly one of local_cidr or local_ip")
        if self.local_ip is not None and self.local_ip in self.peers:
            raise ValueError(f"local_ip {self.local_ip} cannot also be a peer")
        local = self.local_ip or self.local_cidr
        family = ipaddress.ip_network(local, strict=False).version
        if any(ipaddress.ip_address(peer).version != family for peer in self.peers):
            raise ValueError(f"peers must be IPv{family} addresses, like {local}")
        return self


def _address(value):
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


NetworkSpec = Annotated[Union[NovlanSpec, VlanSpec, VxlanSpec], Field(discriminator="type")]


class DesiredNetwork(RootModel[NetworkSpec]):
    """The body of `PUT /v1/networks/<name>`: one of the three kinds, told by `type`."""


def parse_spec(data):
    """A stored or received desired state as its spec model (pydantic errors on bad input)."""
    return DesiredNetwork.model_validate(data).root


# --- names -----------------------------------------------------------------------------

def short_ifname(preferred, prefix):
    """`preferred` when it fits IFNAMSIZ, else `prefix` + a digest of it: same on every host."""
    if len(preferred.encode()) <= IFNAMSIZ:
        return preferred
    digest = hashlib.sha256(preferred.encode()).hexdigest()
    return prefix + digest[:IFNAMSIZ - len(prefix)]


def bridge_name(spec):
    if spec.type == "novlan":
        return short_ifname(f"br-{spec.interface}", "br-")
    if spec.type == "vlan":
        return short_ifname(f"br-{spec.interface}-{spec.vlan}", "br-")
    return f"br-vx-{spec.vni}"


def vlan_ifname(interface, vlan):
    return short_ifname(f"{interface}.{vlan}", f"v{vlan}-")


def vxlan_ifname(vni):
    return f"vx-{vni}"


def network_alias(name):
    return ALIAS_PREFIX + name


def network_of_alias(alias):
    """The network an interface alias names, or None for interfaces the agent did not build."""
    if alias and alias.startswith(ALIAS_PREFIX):
        return alias[len(ALIAS_PREFIX):] or None
    return None


# --- the plan --------------------------------------------------------------------------

@dataclass(frozen=True)
class HostAddress:
    """One address of the host, as the VTEP choice sees it."""
    ifname: str
    address: str
    prefixlen: int
    mtu: int


@dataclass(frozen=True)
class Link:
    """One interface the agent builds; `attrs` are kind data in netlink attribute terms."""
    ifname: str
    kind: str
    attrs: tuple = ()
    lower: Optional[str] = None     # the device it rides on (VLAN parent, VXLAN underlay)
    mtu: Optional[int] = None


@dataclass(frozen=True)
class NetworkPlan:
    """Everything one network is on one host, in creation order."""
    name: str
    alias: str
    bridge: Link
    lowers: tuple       # built links under the bridge (VLAN sub-interface, VXLAN device)
    ports: tuple        # interface names enslaved to the bridge
    peers: tuple = ()   # VXLAN flood destinations (all-zero FDB entries)

    @property
    def built(self):
        return self.lowers + (self.bridge,)


def choose_vtep(spec, addresses):
    """The host address VXLAN sends from: `local_ip` itself, or the first inside `local_cidr`."""
    if spec.local_ip is not None:
        for entry in addresses:
            if entry.address == spec.local_ip:
                return entry
        raise InvalidNetwork(f"local_ip {spec.local_ip} is not an address of this host")
    network = ipaddress.ip_network(spec.local_cidr)
    for entry in sorted(addresses, key=lambda a: (a.ifname, a.address)):
        if ipaddress.ip_address(entry.address) in network:
            return entry
    raise InvalidNetwork(f"no address of this host falls in local_cidr {spec.local_cidr}")


def plan_network(name, spec, vtep=None):
    """The interfaces `spec` needs on this host; `vtep` (from choose_vtep) for VXLAN only."""
    alias = network_alias(name)
    if spec.type == "novlan":
        bridge = Link(bridge_name(spec), "bridge", mtu=spec.mtu)
        return NetworkPlan(name, alias, bridge, (), (spec.interface,))
    if spec.type == "vlan":
        sub = Link(vlan_ifname(spec.interface, spec.vlan), "vlan",
                   (("vlan_id", spec.vlan),), lower=spec.interface, mtu=spec.mtu)
        bridge = Link(bridge_name(spec), "bridge", mtu=spec.mtu)
        return NetworkPlan(name, alias, bridge, (sub,), (sub.ifname,))
    if vtep is None:
        raise InvalidNetwork("a VXLAN network needs a VTEP address")
    mtu = spec.mtu or vtep.mtu - VXLAN_OVERHEAD
    device = Link(vxlan_ifname(spec.vni), "vxlan",
                  (("vxlan_id", spec.vni), ("vxlan_local", vtep.address),
                   ("vxlan_port", spec.port), ("vxlan_learning", 0)),
                  lower=vtep.ifname, mtu=mtu)
    bridge = Link(bridge_name(spec), "bridge", mtu=mtu)
    return NetworkPlan(name, alias, bridge, (device,), (device.ifname,), tuple(spec.peers))


def peer_changes(current, desired):
    """(to add, to remove) to turn the current flood list into the desired one."""
    current, desired = set(current), set(desired)
    return sorted(desired - current), sorted(current - desired)
