"""What the live host itself runs on each PCI function: its disks and its network.

A function is the host's own when a block device below it holds a mounted filesystem,
active swap, or is a member of a device-mapper (LVM) or md device, or when a network
interface below it (or a bond, bridge or VLAN over it) carries the default route or an
address the agent or libvirtd listens on. Read from /proc and sysfs (block, net) and
netlink (routes, addresses); only meaningful on the live host, never on a captured tree.
"""

import logging
import os
import re
import socket

from agent.inventory.sysfs import pci_functions_on_path

log = logging.getLogger(__name__)

LIBVIRT_PORTS = (16509, 16514)      # libvirtd's TCP and TLS listeners
_MAX_MOUNTS_NAMED = 3
_TCP_LISTEN = "0A"


def read_host_uses(sysfs_root="/sys", proc_root="/proc", agent_port=None):
    """{pci address: ["root filesystem / on vda", ...]} for every function the host uses."""
    uses = {}
    for address, use in _block_uses(sysfs_root, proc_root):
        uses.setdefault(address, []).append(use)
    ports = set(LIBVIRT_PORTS) | ({agent_port} if agent_port else set())
    for address, use in _net_uses(sysfs_root, proc_root, ports):
        uses.setdefault(address, []).append(use)
    return {address: sorted(set(found)) for address, found in uses.items()}


# --- block devices ---------------------------------------------------------------------
def _block_uses(sysfs_root, proc_root):
    block_dir = os.path.join(sysfs_root, "class", "block")
    try:
        names = sorted(os.listdir(block_dir))
    except OSError:
        return
    mounts = _mounts(proc_root)
    swaps = _swaps(proc_root)
    dev_of = {name: _read(os.path.join(block_dir, name, "dev")) for name in names}
    memo = {}
    for name in names:
        use = _block_use(name, block_dir, dev_of, mounts, swaps, memo, depth=0)
        if not use:
            continue
        for address in pci_functions_on_path(os.path.join(block_dir, name)):
            yield address, use


def _block_use(name, block_dir, dev_of, mounts, swaps, memo, depth):
    """A sentence for what `name` (or a device built on it) is used for, or None."""
    if name in memo:
        return memo[name]
    memo[name] = None
    words = []
    points = mounts.get(dev_of.get(name))
    if points:
        shown = sorted(points, key=lambda p: (len(p), p))[:_MAX_MOUNTS_NAMED]
        words.append(f"filesystem mounted at {', '.join(shown)} on {name}")
    if name in swaps:
        words.append(f"active swap on {name}")
    if depth < 8:
        for holder in _list(os.path.join(block_dir, name, "holders")):
            inner = _block_use(holder, block_dir, dev_of, mounts, swaps, memo, depth + 1)
            kind = "md array" if holder.startswith("md") else "device-mapper (LVM) volume"
            words.append(f"{name} is a member of {kind} {holder}"
                         + (f" ({inner})" if inner else " in use"))
    memo[name] = "; ".join(words) or None
    return memo[name]


def _mounts(proc_root):
    """{"major:minor": {mount points}} from mountinfo (bind mounts folded)."""
    found = {}
    for line in _read(os.path.join(proc_root, "self", "mountinfo"), "").splitlines():
        fields = line.split()
        if len(fields) > 4 and not fields[2].startswith("0:"):
            found.setdefault(fields[2], set()).add(_unescape(fields[4]))
    return found


def _swaps(proc_root):
    names = set()
    for line in _read(os.path.join(proc_root, "swaps"), "").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].startswith("/dev/"):
            names.add(os.path.basename(os.path.realpath(fields[0])))
            names.add(os.path.basename(fields[0]))
    return names


# --- network ---------------------------------------------------------------------------
def _net_uses(sysfs_root, proc_root, ports):
    net_dir = os.path.join(sysfs_root, "class", "net")
    try:
        routes, addresses = _routes_and_addresses()
    except Exception as exc:  # noqa: BLE001 - no netlink: say nothing rather than guess
        log.warning("cannot read routes and addresses (%s); NIC use unknown", exc)
        return
    listening = _listen_addresses(proc_root, ports)
    carried = {}
    for ifname in routes:
        carried.setdefault(ifname, []).append("default route")
    for ifname, addrs in addresses.items():
        for address in sorted(addrs & listening):
            carried.setdefault(ifname, []).append(f"address {address} (agent/libvirtd listen)")
    for ifname, what in carried.items():
        for lower, via in _lower_devices(net_dir, ifname):
            path = f" via {via}" if via != lower else ""
            sentence = f"network: {' and '.join(what)} on {lower}{path}"
            for address in pci_functions_on_path(os.path.join(net_dir, lower)):
                yield address, sentence


def _routes_and_addresses():
    """({ifname with a default route}, {ifname: {addresses}}) over netlink, main table."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        default = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=254):
                if route["dst_len"] != 0:
                    continue
                oifs = [route.get_attr("RTA_OIF")]
                for hop in route.get_attr("RTA_MULTIPATH") or ():
                    oifs.append(hop["oif"])
                default.update(names[i] for i in oifs if i in names)
        addresses = {}
        for entry in ipr.get_addr():
            ifname = names.get(entry["index"])
            value = entry.get_attr("IFA_ADDRESS") or entry.get_attr("IFA_LOCAL")
            if ifname and value:
                addresses.setdefault(ifname, set()).add(value)
    return default, addresses


def _listen_addresses(proc_root, ports):
    """Specific (not wildcard) addresses with a TCP listener on one of `ports`."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in _read(os.path.join(proc_root, "net", name), "").splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != _TCP_LISTEN:
                continue
            host, _, port = fields[1].partition(":")
            if int(port, 16) in ports:
                address = _proc_address(host, family)
                if address not in ("0.0.0.0", "::"):  # nosec B104 - wildcard listeners skipped
                    found.add(address)
    return found


def _proc_address(text, family):
    raw = bytes.fromhex(text)
    # /proc/net/tcp prints each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, raw)


def _lower_devices(net_dir, ifname, via=None, depth=0):
    """(interface, the upper one it was reached from) down to the physical ones."""
    lowers = [entry[len("lower_"):] for entry in _list(os.path.join(net_dir, ifname))
              if entry.startswith("lower_")]
    yield ifname, via or ifname
    if depth < 6:
        for lower in lowers:
            yield from _lower_devices(net_dir, lower, via or ifname, depth + 1)


# --- helpers ---------------------------------------------------------------------------
def _list(path):
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _read(path, default=None):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return default


def _unescape(text):
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)
