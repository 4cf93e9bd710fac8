"""Host networks: turn a desired state into bridges, VLAN and VXLAN links, idempotently.

Every change is decided by reading the links back and comparing them with the plan from
`hostplane.core.networks`, so applying the same state twice changes nothing. Ownership
is the interface alias: a same-named interface without our alias is a 409 before anything
is touched, and DELETE removes only interfaces that carry the network's alias.

An agent killed mid-apply leaves the intent recorded (`DesiredSet.begin`); the next lock
holder — the restarted agent at start, or the next PUT — finishes it (the caller asked
for it and may not have heard back), or, if it cannot be built, removes what the dead
apply built and keeps the previous desired state. Links are found by name and alias, so
finishing reuses what exists: nothing is built twice.
"""

import logging

from agent.net.netlink import Netlink, NetlinkError
from agent.net.state import DesiredSet
from hostplane.core.networks import (InvalidNetwork, choose_vtep, network_alias,
                                     network_of_alias, parse_spec, peer_changes, plan_network)
from agent.testhooks import never
from hostplane.errors import ApiError, BadRequest, Conflict, NotFound

log = logging.getLogger(__name__)


class HostNetworks:
    """The networks of one host (or one network namespace), with their desired set on disk."""

    def __init__(self, netns="", state_path=None, pause=never):
        """`pause(step)`: the fault-injection seam (`agent.testhooks`), a no-op unless a
        test asks."""
        self.netlink = Netlink(netns)
        self.desired = DesiredSet(state_path)
        self.pause = pause
        self.problems = {}  # network name -> why the last reconcile could not build it

    def close(self):
        self.netlink.close()

    # --- the API's verbs ---------------------------------------------------------------

    def apply(self, name, spec):
        """Make `name` look like `spec`; returns (view, created) with the changes made."""
        with self.desired.locked() as write:
            stored = self._finish_interrupted(write)
            created = name not in stored
            wanted = spec.model_dump(exclude_none=True)
            self.desired.begin(name, wanted, stored.get(name))
            try:
                changes, links = self._realise(name, spec)
                stored[name] = wanted
                write(stored)
            finally:
                self.desired.done()
        self.problems.pop(name, None)
        view = self._view(name, stored[name], links)
        view["changes"] = changes
        return view, created

    def delete(self, name):
        """Remove the interfaces carrying `name`'s alias and forget its desired state."""
        with self.desired.locked() as write:
            stored = self._finish_interrupted(write)
            ours = self._links_of(name, self.netlink.links())
            if not ours and name not in stored:
                raise NotFound(f"no network {name!r} on this host", code="network_not_found")
            for state in sorted(ours, key=lambda s: s.kind == "bridge"):  # lowers first
                self.netlink.delete(state.index)
            stored.pop(name, None)
            write(stored)
        self.problems.pop(name, None)
        return {"name": name, "removed": [state.ifname for state in ours]}

    def list(self):
        stored, links = self.desired.read(), self.netlink.links()
        names = set(stored) | {network_of_alias(s.alias) for s in links.values()}
        peers = self.netlink.flood_peers()
        return [self._view(n, stored.get(n), links, lambda index: peers.get(index, []))
                for n in sorted(names - {None})]

    def get(self, name):
        stored, links = self.desired.read(), self.netlink.links()
        if name not in stored and not self._links_of(name, links):
            raise NotFound(f"no network {name!r} on this host", code="network_not_found")
        return self._view(name, stored.get(name), links)

    def reconcile(self):
        """Rebuild what the stored desired set asks for; returns {name: "ok" | reason}."""
        report = {}
        with self.desired.locked() as write:  # gunicorn workers start together: one at a time
            for name, stored in sorted(self._finish_interrupted(write).items()):
                try:
                    self._realise(name, parse_spec(stored))
                    report[name] = "ok"
                    self.problems.pop(name, None)
                except (ApiError, ValueError, OSError, NetlinkError) as exc:
                    reason = getattr(exc, "message", None) or str(exc)
                    log.warning("network %s not rebuilt: %s", name, reason)
                    report[name] = self.problems[name] = reason
        return report

    def _finish_interrupted(self, write):
        """With the set locked: complete (or undo) an apply a dead process left; returns
        the desired set as it then is."""
        stored = self.desired.read()
        pending = self.desired.interrupted()
        if pending is None:
            return stored
        name = pending["name"]
        try:
            self._realise(name, parse_spec(pending["spec"]))
            stored[name] = pending["spec"]
            write(stored)
            outcome = "finished"
        except (ApiError, ValueError, OSError, NetlinkError) as exc:
            outcome = f"rolled back: {getattr(exc, 'message', None) or exc}"
            if pending["previous"] is None:          # new network: remove what it built
                links = self.netlink.links()
                for state in sorted(self._links_of(name, links), key=lambda s: s.kind == "bridge"):
                    self.netlink.delete(state.index)
            # else: the stored previous spec is rebuilt like any other desired network
        log.warning("interrupted apply of network %s (pid %s): %s", name, pending["pid"], outcome)
        self.desired.done()
        return stored

    # --- building ----------------------------------------------------------------------

    def _realise(self, name, spec):
        """Build `spec`; returns (changes, the network's links as they now are)."""
        links = self.netlink.links()   # the one full dump: later reads fetch only our names
        plan = self._plan(name, spec, links)
        self._check_ownership(plan, links)
        changes, created = [], []
        names = [link.ifname for link in plan.built] + list(plan.ports)
        try:
            for link in plan.built:
                self._ensure(link, plan.alias, links, changes, created)
            now = self.netlink.links(names)
            for port in plan.ports:
                self._enslave(now[port], now[plan.bridge.ifname], changes)
            now = self.netlink.links(names)
            for link in plan.built:
                self._settle(link, now[link.ifname], changes)
            if spec.type == "vxlan":
                self._flood(now[plan.lowers[0].ifname], plan.peers, changes)
        except Exception:
            for index in reversed(created):
                self.netlink.delete(index)
            raise
        self._drop_stale(plan, links, changes)
        return changes, self.netlink.links(names)

    def _plan(self, name, spec, links):
        try:
            if spec.type == "vxlan":
                ours = {ifname for ifname, state in links.items()
                        if network_of_alias(state.alias)}
                addresses = self.netlink.addresses(links, skip=ours)
                return plan_network(name, spec, choose_vtep(spec, addresses))
            if spec.interface not in links:
                raise InvalidNetwork(f"interface {spec.interface} does not exist on this host")
            return plan_network(name, spec)
        except InvalidNetwork as exc:
            raise BadRequest(str(exc), code="invalid_network") from None

    def _check_ownership(self, plan, links):
        """409 before anything changes if a name we need belongs to someone else."""
        for link in plan.built:
            state = links.get(link.ifname)
            if state is None:
                continue
            owner = network_of_alias(state.alias)
            if owner is None:
                raise Conflict(f"interface {link.ifname} exists and was not built by hostplane; "
                               "nothing was changed", code="interface_not_ours",
                               details={"interface": link.ifname})
            if owner != plan.name:
                raise Conflict(f"interface {link.ifname} belongs to network {owner!r}",
                               code="interface_taken",
                               details={"interface": link.ifname, "network": owner})
        built = {link.ifname for link in plan.built}
        by_index = {state.index: state for state in links.values()}
        for port in set(plan.ports) - built:
            master = by_index.get(links[port].master)
            if master is not None and master.ifname != plan.bridge.ifname:
                raise Conflict(f"interface {port} is already a port of {master.ifname}",
                               code="interface_busy",
                               details={"interface": port, "master": master.ifname})

    def _ensure(self, link, alias, links, changes, created):
        state = links.get(link.ifname)
        if state is not None and not _same_kind_data(link, state, links):
            self.netlink.delete(state.index)
            changes.append(f"removed {state.kind} {link.ifname} to rebuild it")
            state = None
        if state is None:
            created.append(self.netlink.add(link, alias, lambda ifname: links[ifname].index))
            changes.append(f"created {link.kind} {link.ifname}")
            self.pause(f"created-{link.kind}")

    def _enslave(self, port, bridge, changes):
        if port.master != bridge.index:
            self.netlink.set(port, master=bridge.index)
            changes.append(f"added {port.ifname} to {bridge.ifname}")

    def _settle(self, link, state, changes):
        """MTU and up-state last: enslaving a port can move a bridge's MTU."""
        if link.mtu and state.mtu != link.mtu:
            self.netlink.set(state, mtu=link.mtu)
            changes.append(f"set mtu of {link.ifname} to {link.mtu}")
        if not state.up:
            self.netlink.set(state, state="up")
            changes.append(f"set {link.ifname} up")

    def _flood(self, device, peers, changes):
        to_add, to_remove = peer_changes(self.netlink.flood_peers(device.index), peers)
        for peer in to_add:
            self.netlink.flood_to(device.index, peer)
            changes.append(f"flood to peer {peer}")
        for peer in to_remove:
            self.netlink.flood_to(device.index, peer, add=False)
            changes.append(f"stopped flooding to {peer}")

    def _drop_stale(self, plan, links, changes):
        """Interfaces of this network that the new plan no longer names (e.g. a changed VNI)."""
        wanted = {link.ifname for link in plan.built}
        for state in self._links_of(plan.name, links):
            if state.ifname not in wanted:
                self.netlink.delete(state.index)
                changes.append(f"removed {state.kind} {state.ifname}")

    # --- reading -----------------------------------------------------------------------

    @staticmethod
    def _links_of(name, links):
        alias = network_alias(name)
        return [state for state in links.values() if state.alias == alias]

    def _view(self, name, stored, links, peers_of=None):
        ours = self._links_of(name, links)
        by_index = {state.index: state.ifname for state in links.values()}
        bridges = [state.ifname for state in ours if state.kind == "bridge"]
        view = {"name": name, "type": (stored or {}).get("type"),
                "bridge": bridges[0] if bridges else None,
                "status": _status(stored, ours, self.problems.get(name)),
                "desired": stored,
                "interfaces": [{"ifname": s.ifname, "kind": s.kind, "mtu": s.mtu, "up": s.up,
                                "master": by_index.get(s.master)}
                               for s in sorted(ours, key=lambda s: s.ifname)]}
        if self.problems.get(name):
            view["problem"] = self.problems[name]
        for state in ours:
            if state.kind == "vxlan":
                view["peers"] = (peers_of or self.netlink.flood_peers)(state.index)
        return view


def _status(stored, ours, problem):
    if stored is None:
        return "orphaned"       # built by hostplane, no longer desired: left for the operator
    if problem or not ours:
        return "missing"
    return "ok"


def _same_kind_data(link, state, links):
    """Whether an existing link already has the attributes that cannot change in place."""
    if state.kind != link.kind:
        return False
    for key, value in link.attrs:
        if state.data.get("IFLA_" + key.upper()) != value:
            return False
    if link.lower is not None:
        lower = state.data.get("IFLA_VXLAN_LINK") if link.kind == "vxlan" else state.lower
        return lower == links[link.lower].index
    return True
