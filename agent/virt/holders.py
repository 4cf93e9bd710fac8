"""Who holds which device, read from every domain's live and persistent XML.

Used by the agent's libvirt adapter (USB mapped to the inventory's stable ids) and by
`hostplane-agent check` (no inventory: USB by vendor/product/bus/device). A device found
in more than one domain is returned with all of them, never one picked silently.
"""

from agent.virt import domxml
from agent.virt.connection import libvirt


def scan(conn, prefix="", usb_id=None, operations=None):
    """{"pci:<id>" | "usb:<id>": [vm, ...]} over the domains named with `prefix`; with
    `operations` (a dict), also {vm: the controller's operation id in its metadata}."""
    usb_id = usb_id or raw_usb_id
    found = {}
    domains = ours(conn.listAllDomains(), prefix)
    active = _uuids(conn, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)  # 2 calls, not 2 per domain
    transient = _uuids(conn, libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
    for dom in sorted(domains, key=lambda d: d.name()):
        uuid = dom.UUIDString()
        try:
            facts = {}
            for entry in domain_hostdevs(dom, usb_id, uuid in active, uuid not in transient,
                                         facts):
                found.setdefault(entry["key"], []).append(dom.name())
            if operations is not None:
                operations[dom.name()] = facts.get("op_id")
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:   # undefined meanwhile
                raise
    return found


def ours(domains, prefix):
    """The domains an agent manages: all, or those named with its `[libvirt] domain_prefix`
    (several agents, or test runs, sharing one libvirtd)."""
    return [d for d in domains if d.name().startswith(prefix)]


def conflicts(found):
    """The devices of a `scan` held by more than one domain."""
    return {key: vms for key, vms in found.items() if len(vms) > 1}


def domain_hostdevs(dom, usb_id, active=None, persistent=None, facts=None):
    """The domain's passthrough devices with ids, each marked live and/or persistent;
    `facts` (a dict), if given, gets the domain's `op_id` from the same XML."""
    active = dom.isActive() if active is None else active
    persistent = dom.isPersistent() if persistent is None else persistent
    sources = [("live" if active else "persistent", dom.XMLDesc(0))]
    if active and persistent:
        sources.append(("persistent", dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    merged = {}
    for where, text in sources:
        root = domxml.parse(text)
        if facts is not None and where == sources[0][0]:
            facts["op_id"] = domxml.operation_of(root)
        for entry in domxml.hostdevs(root):
            entry["id"] = entry["id"] if entry["type"] == "pci" else usb_id(entry)
            entry["key"] = f"{entry['type']}:{entry['id']}"
            kept = merged.setdefault(entry["key"], {**entry, "live": False, "persistent": False})
            kept[where] = True
    return list(merged.values())


def raw_usb_id(entry):
    return f"{entry['vendor_id']}:{entry['product_id']}@bus{entry['busnum']}"


def _uuids(conn, flags):
    return {dom.UUIDString() for dom in conn.listAllDomains(flags)}
