"""PCI device records → the inventory model: type, IOMMU group, topology, assignability.

Input is one plain dict per function as a sysfs reader produced it (see
`agent.inventory.sysfs.SysfsTree.read_pci_function`); output is the JSON-ready dict of
INTERFACE.md. Everything here is pure, so tests feed it recorded values directly.

The rules, each seen on real machines:
- a BMC's display function (ASPEED, Matrox G200e*, Hisilicon Hi171x) is the host's
  console, typed `display`, never `gpu`, and not offered;
- "is a bridge" comes from the header type (config byte 0x0E: 1 PCI-to-PCI, 2 CardBus),
  as the class lies at the edges (an NVSwitch is class 0680 yet an endpoint); host and
  ISA bridges (header type 0) stay bridges by class; with no config space the class
  decides;
- a function behind an Intel VMD controller shares its interrupt remapping and cannot
  be passed through alone;
- a function carrying the host's own disks or network (`host_uses`) is not offered.
"""

import functools

# (class prefix, type): the longest matching prefix of the 6-digit class code wins.
_CLASS_TYPES = (
    ("0300", "gpu"), ("0302", "gpu"), ("0380", "gpu"),
    ("0108", "nvme"), ("01", "storage"),
    ("02", "nic"),
    ("0c03", "usb-controller"),
    ("06", "bridge"),
)
# Every type device_type answers (class types, and the ones decided beside the class).
PCI_TYPES = ("gpu", "gpu-audio", "display", "nvswitch", "nvme", "storage", "nic",
             "usb-controller", "bridge", "other")
AUDIO_CLASS = "0403"
DISPLAY_CLASS = "03"
# Class 06 subclasses that are bridges whatever their header says: host, ISA, EISA, MCA,
# PCI-to-PCI, PCMCIA, NuBus, CardBus, RACEway, semi-transparent PCI-to-PCI, InfiniBand.
_BRIDGE_SUBCLASSES = ("0600", "0601", "0602", "0603", "0604", "0605", "0606", "0607",
                      "0608", "0609", "060a")
_BRIDGE_HEADER_TYPES = (1, 2)
# Display functions of baseboard management controllers: the console an operator reaches
# through the BMC, present on nearly every server next to its real GPUs.
BMC_DISPLAY_VENDORS = ("1a03",)                       # ASPEED: every AST display function
BMC_DISPLAY_DEVICES = {("102b", d) for d in ("0522", "0532", "0533", "0534", "0536", "0538")} \
    | {("19e5", "1711")}                              # Matrox G200e*/eW/eH, Hisilicon Hi171x
NVSWITCH_CLASS = "0680"
NVIDIA = "10de"
# Intel Volume Management Device controllers (the `vmd` driver's id table).
VMD_DEVICES = {("8086", d) for d in ("201d", "28c0", "467f", "4c3d", "7d0b", "9a0b", "a77f",
                                     "ad0b", "b60b", "c45d", "0b60", "b06f")}
DEFAULT_CRITICAL_DRIVERS = ("virtio-pci", "ahci", "ata_piix", "megaraid_sas", "mpt3sas",
                            "smartpqi", "hpsa", "aacraid")


@functools.lru_cache(maxsize=512)
def type_for_class(class_code):
    """Device type from a class code such as "030200" (gpu-audio needs the siblings)."""
    code = class_code.lower()
    best = ("", "other")
    for prefix, kind in _CLASS_TYPES:
        if code.startswith(prefix) and len(prefix) > len(best[0]):
            best = (prefix, kind)
    return best[1]


def device_type(record):
    """The type of one function from its ids, class and header (gpu-audio needs siblings)."""
    vendor, device, code = record["vendor_id"], record["device_id"], record["class_code"]
    if code.startswith(DISPLAY_CLASS) and (vendor in BMC_DISPLAY_VENDORS
                                           or (vendor, device) in BMC_DISPLAY_DEVICES):
        return "display"
    if is_bridge(record):
        return "bridge"
    if code.startswith(NVSWITCH_CLASS) and vendor == NVIDIA:
        return "nvswitch"
    kind = type_for_class(code)
    return "other" if kind == "bridge" else kind


def is_bridge(record):
    """Header type 1/2, or a bridge subclass; class 0680 only when the header is unknown."""
    code = record["class_code"].lower()
    if code[:4] in _BRIDGE_SUBCLASSES:
        return True
    header = record.get("header_type")
    if header is not None:
        return header in _BRIDGE_HEADER_TYPES
    return code.startswith("06")


def is_vmd_controller(record):
    return record.get("driver") == "vmd" or \
        (record["vendor_id"], record["device_id"]) in VMD_DEVICES


def slot_of(address):
    """`0000:3b:00.1` → `0000:3b:00`: functions of one slot share a physical card."""
    return address.rsplit(".", 1)[0]


def domain_of(address):
    return int(address.split(":", 1)[0], 16)


def lspci_device_name(vendor_id, device_id, vendor_name):
    """What lspci prints for a device its pci.ids does not know: `NVIDIA Corporation Device 2901`."""
    return f"{vendor_name or 'Vendor ' + vendor_id} Device {device_id}"


def build_pci_inventory(records, critical_drivers=DEFAULT_CRITICAL_DRIVERS, names=None,
                        host_uses=None):
    """Model dicts keyed by address, from raw records of every function on the host.

    `names(vendor_id, device_id)` → (vendor_name, device_name), either may be None; None
    skips the database (the lspci fallback name is still given). `host_uses`:
    {address: [what the host runs on it]} read on the live host, or None when unknown
    (a captured tree has no mounts or routes to look at).
    """
    records = {r["address"]: r for r in records}
    kinds = {address: device_type(r) for address, r in records.items()}
    groups = {number: sorted(r["address"] for r in members)
              for number, members in iommu_groups(records.values()).items()}
    gpu_slots = {slot_of(a) for a, kind in kinds.items() if kind == "gpu"}
    context = _Context(records, kinds, groups, critical_drivers, host_uses)
    devices = {}
    for address, record in sorted(records.items()):
        kind = kinds[address]
        if record["class_code"].startswith(AUDIO_CLASS) and slot_of(address) in gpu_slots:
            kind = "gpu-audio"
        devices[address] = _model(record, kind, context, names)
    return devices


def iommu_groups(devices):
    """{group number: [device, ...]} in the order given; a device with no group is in none.

    The one answer to "which functions share an IOMMU group" (VFIO hands a whole group to
    one VM or to none): the inventory, the agent's group listing, the scheduler's index and
    the controller's releases and adoptions all ask it. A device is a record or model dict
    (its "iommu_group") or an object with an `iommu_group` attribute (rows, views).
    """
    groups = {}
    for device in devices:
        number = _group_of(device)
        if number is not None:
            groups.setdefault(number, []).append(device)
    return groups


def group_siblings(device, devices):
    """The other members of `device`'s IOMMU group among `devices` (none without a group)."""
    number = _group_of(device)
    if number is None:
        return []
    return [other for other in devices if other is not device and _group_of(other) == number]


def sibling_ids(model):
    """Addresses of the other functions in a PCI model's IOMMU group (its
    `iommu_group_devices`, which `build_pci_inventory` filled from `iommu_groups`)."""
    return [member for member in model["iommu_group_devices"] if member != model["id"]]


def _group_of(device):
    return device.get("iommu_group") if isinstance(device, dict) else device.iommu_group


class _Context:
    """What every function's rules look at besides itself."""

    def __init__(self, records, kinds, groups, critical_drivers, host_uses):
        self.records, self.kinds, self.groups = records, kinds, groups
        self.critical_drivers = tuple(critical_drivers)
        self.host_uses = host_uses

    def uses_of(self, address):
        return None if self.host_uses is None else list(self.host_uses.get(address, ()))


def _model(record, kind, context, names):
    address = record["address"]
    vendor_name = device_name = None
    if names is not None:
        vendor_name, device_name = names(record["vendor_id"], record["device_id"])
    if device_name is None:
        device_name = lspci_device_name(record["vendor_id"], record["device_id"], vendor_name)
    group = record.get("iommu_group")
    members = context.groups.get(group, []) if group is not None else []
    uses = context.uses_of(address)
    reason = not_assignable_reason(record, kind, members, context)
    total_vfs = record.get("sriov_totalvfs")
    return {
        "id": address,
        "vendor_id": record["vendor_id"],
        "device_id": record["device_id"],
        "vendor_name": vendor_name,
        "device_name": device_name,
        "subsystem_vendor_id": record.get("subsystem_vendor_id"),
        "subsystem_device_id": record.get("subsystem_device_id"),
        "class_code": record["class_code"],
        "type": kind,
        "driver": record.get("driver"),
        "numa_node": record.get("numa_node"),
        "iommu_group": group,
        "iommu_group_devices": members,
        "upstream": list(record.get("upstream") or []),
        "link": record.get("link"),
        "host_use": "unknown" if uses is None else ("in_use" if uses else "none"),
        "host_uses": uses or [],
        "assignable": reason is None,
        "not_assignable_reason": reason,
        "sriov": None if total_vfs is None else {
            "total_vfs": total_vfs,
            "num_vfs": record.get("sriov_numvfs") or 0,
            "vfs": sorted(record.get("virtfns") or []),
        },
        "physfn": record.get("physfn"),
        "attached_to": None,
    }


def not_assignable_reason(record, kind, members, context):
    """Why this function cannot be handed to a VM, or None if it can."""
    address = record["address"]
    if kind == "bridge":
        return "bridges are not endpoints and cannot be passed through"
    if kind == "display":
        return "BMC display adapter: the host's console through its management controller"
    uses = context.uses_of(address)
    if uses:
        return "carries the host's own " + "; ".join(uses)
    vmd = _vmd_above(record, context.records)
    if vmd is not None:
        return (f"behind Intel VMD controller {vmd}, which remaps its interrupts: it cannot "
                "be passed through alone (pass the VMD controller, or turn VMD off in firmware)")
    if domain_of(address) > 0xffff and not record.get("upstream"):
        return (f"in PCI domain {address.split(':', 1)[0]}, behind an Intel VMD controller "
                "this tree does not name: it cannot be passed through alone")
    if record.get("iommu_group") is None:
        return "no IOMMU group: the IOMMU is off or unsupported on this host"
    driver = record.get("driver")
    if driver in context.critical_drivers:
        return f"bound to host-critical driver {driver}"
    if record.get("sriov_numvfs"):
        return (f"SR-IOV physical function with {record['sriov_numvfs']} VFs enabled; "
                "pass its VFs through instead")
    return _group_reason(record, members, context)


def _vmd_above(record, records):
    """The address of the VMD controller this function sits behind, or None."""
    for upstream in record.get("upstream") or ():
        above = records.get(upstream)
        if above is not None and is_vmd_controller(above):
            return upstream
    return None


def _group_reason(record, members, context):
    address, group = record["address"], record.get("iommu_group")
    for member in members:
        other = context.records.get(member)
        if member == address or other is None:
            continue
        if context.kinds.get(member) == "bridge":
            return f"IOMMU group {group} also holds bridge {member}"
        if other.get("driver") in context.critical_drivers:
            return (f"IOMMU group {group} also holds {member}, "
                    f"bound to host-critical driver {other['driver']}")
        uses = context.uses_of(member)
        if uses:
            return f"IOMMU group {group} also holds {member}, which carries the host's own " \
                + "; ".join(uses)
    return None
