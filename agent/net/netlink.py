"""The one place that talks netlink (pyroute2), optionally inside a network namespace.

Links are read back as `LinkState` records and compared by the caller; kernel refusals
become API errors a caller can act on (a missing kernel module is a 501 naming it, not a
500). `add_request` is pure so the exact request for a VLAN can be checked on kernels
that cannot build one.
"""

import errno
import os
import threading
from dataclasses import dataclass, field
from typing import Optional

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hostplane.core.networks import ZERO_MAC, HostAddress
from hostplane.errors import BadRequest, Conflict, DependencyDown, NotImplementedHere

# The module the kernel loads on demand for each link kind we build.
KERNEL_MODULE = {"vlan": "8021q", "vxlan": "vxlan", "bridge": "bridge"}
_LOWER_ATTR = {"vlan": "link", "vxlan": "vxlan_link"}
_KIND_DATA = {"vlan": ("IFLA_VLAN_ID",),
              "vxlan": ("IFLA_VXLAN_ID", "IFLA_VXLAN_LOCAL", "IFLA_VXLAN_PORT",
                        "IFLA_VXLAN_LEARNING", "IFLA_VXLAN_LINK")}
NETNS_DIR = "/var/run/netns"
# Refusals that come from what was asked (an MTU too big, loopback as a bridge port).
_CALLER_CAUSED = (errno.EINVAL, errno.ERANGE, errno.EBUSY, errno.ELOOP, errno.EOPNOTSUPP)


@dataclass
class LinkState:
    index: int
    ifname: str
    kind: Optional[str]
    alias: Optional[str]
    mtu: int
    up: bool
    master: Optional[int]
    lower: Optional[int]
    data: dict = field(default_factory=dict)


def add_request(link, index_of):
    """The `link("add", ...)` arguments that build `link`; `index_of` maps a name to an index."""
    request = {"ifname": link.ifname, "kind": link.kind}
    request.update(dict(link.attrs))
    if link.mtu:
        request["mtu"] = link.mtu
    if link.lower:
        request[_LOWER_ATTR[link.kind]] = index_of(link.lower)
    return request


class Netlink:
    """An rtnetlink socket in `netns` ("" = the agent's own), opened on first use."""

    def __init__(self, netns=""):
        self.netns = netns
        self._ipr = None
        self._lock = threading.RLock()

    @property
    def ipr(self):
        if self._ipr is None:
            if self.netns and not os.path.exists(os.path.join(NETNS_DIR, self.netns)):
                raise DependencyDown(f"network namespace {self.netns!r} does not exist",
                                     code="netns_missing", details={"netns": self.netns})
            # flags=0: never create the namespace a config names by mistake.
            self._ipr = (IPRoute(netns=self.netns, flags=0, strict_check=True) if self.netns
                         else IPRoute(strict_check=True))
        return self._ipr

    def close(self):
        with self._lock:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None

    # --- reading ---------------------------------------------------------------------

    def links(self, names=None):
        """{ifname: LinkState}: every link (one dump), or just `names` that exist (cheap)."""
        with self._lock:
            if names is None:
                return {state.ifname: state for state in map(_link_state, self.ipr.get_links())}
            found = {}
            for ifname in dict.fromkeys(names):
                try:
                    found[ifname] = _link_state(self.ipr.link("get", ifname=ifname)[0])
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:
                        raise
            return found

    def addresses(self, links, skip=frozenset()):
        """Every address of the host as HostAddress, leaving out interfaces named in `skip`."""
        by_index = {state.index: state for state in links.values()}
        with self._lock:
            found = []
            for entry in self.ipr.get_addr():
                state = by_index.get(entry["index"])
                if state is None or state.ifname in skip:
                    continue
                found.append(HostAddress(state.ifname, entry.get_attr("IFA_ADDRESS"),
                                         entry["prefixlen"], state.mtu))
            return found

    def flood_peers(self, index=None):
        """Flood destinations (all-zero FDB entries) of one VXLAN device, or {index: them}."""
        with self._lock:
            entries = self.ipr.fdb("dump", **({} if index is None else {"ifindex": index}))
            peers = {}
            for entry in entries:
                if entry.get_attr("NDA_LLADDR") == ZERO_MAC and entry.get_attr("NDA_DST"):
                    peers.setdefault(entry["ifindex"], []).append(entry.get_attr("NDA_DST"))
        peers = {key: sorted(value) for key, value in peers.items()}
        return peers if index is None else peers.get(index, [])

    # --- changing --------------------------------------------------------------------

    def add(self, link, alias, index_of):
        """Create `link` and mark it with `alias`; returns its index."""
        request = add_request(link, index_of)
        with self._lock:
            try:
                self.ipr.link("add", **request)
            except NetlinkError as exc:
                raise _add_refused(link, exc) from None
            index = self.ipr.link_lookup(ifname=link.ifname)[0]
            try:  # the kernel ignores IFLA_IFALIAS on creation, so it is set right after
                self.ipr.link("set", index=index, ifalias=alias)
            except NetlinkError:
                self.ipr.link("del", index=index)
                raise
            return index

    def set(self, link, **changes):
        """Change `link` (a LinkState) in place."""
        with self._lock:
            try:
                self.ipr.link("set", index=link.index, **changes)
            except NetlinkError as exc:
                if exc.code not in _CALLER_CAUSED:
                    raise
                if "mtu" in changes:
                    raise BadRequest(f"the kernel refused mtu {changes['mtu']} on {link.ifname}: "
                                     f"{exc.args[-1]}", code="invalid_mtu",
                                     details={"interface": link.ifname}) from None
                if "master" in changes:
                    raise Conflict(f"the kernel refused {link.ifname} as a bridge port: "
                                   f"{exc.args[-1]}", code="cannot_enslave",
                                   details={"interface": link.ifname}) from None
                raise

    def delete(self, index):
        with self._lock:
            try:
                self.ipr.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:  # already gone is what we wanted
                    raise

    def flood_to(self, index, peer, add=True):
        with self._lock:
            self.ipr.fdb("append" if add else "del", ifindex=index, lladdr=ZERO_MAC, dst=peer)


def _link_state(message):
    info = message.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    data = {}
    kind_data = info.get_attr("IFLA_INFO_DATA") if info else None
    if kind_data is not None and not isinstance(kind_data, (str, bytes)):
        data = {name: kind_data.get_attr(name) for name in _KIND_DATA.get(kind, ())}
    return LinkState(index=message["index"], ifname=message.get_attr("IFLA_IFNAME"), kind=kind,
                     alias=message.get_attr("IFLA_IFALIAS"), mtu=message.get_attr("IFLA_MTU"),
                     up=bool(message["flags"] & 1), master=message.get_attr("IFLA_MASTER"),
                     lower=message.get_attr("IFLA_LINK"), data=data)


def _add_refused(link, exc):
    """A kernel refusal to create `link`, as the error a caller can act on."""
    if exc.code in (errno.EOPNOTSUPP, errno.ENODEV) and link.kind in KERNEL_MODULE:
        module = KERNEL_MODULE[link.kind]
        return NotImplementedHere(
            f"this kernel cannot create {link.kind} links: module {module} is missing "
            f"(modprobe {module})", code="kernel_module_missing",
            details={"module": module, "kind": link.kind, "interface": link.ifname})
    if exc.code == errno.EEXIST:
        return Conflict(f"interface {link.ifname} appeared while it was being built",
                        code="interface_exists", details={"interface": link.ifname})
    if exc.code in (errno.EINVAL, errno.ERANGE):
        return BadRequest(f"the kernel refused {link.kind} link {link.ifname}: {exc.args[-1]}",
                          code="kernel_refused", details={"interface": link.ifname})
    return exc
