"""Domain XML in and out, with ElementTree only: libvirt's XML is the source of truth.

`domain_xml` builds a new VM; `hostdev_xml` one passthrough device; `read_domain`
turns a domain's XML back into what the API reports (devices as raw hostdev facts;
the caller maps USB bus/device numbers to stable ids with the inventory).
"""

import xml.etree.ElementTree as ET

import defusedxml.ElementTree as SafeET

from hostplane.core.numa import parse_cpulist

USB_CONTROLLER = "qemu-xhci"
USB_PORTS = "15"    # qemu-xhci's maximum; per-VM limits need 1 + 6 + 4 = 11
XHCI_MODELS = ("qemu-xhci", "nec-xhci", "piix3-uhci+xhci")
# The domain's own record of which controller operation made it (libvirt keeps
# namespaced <metadata> elements as they are).
METADATA_NS = "https://hostplane.invalid/xmlns/vm/1"
ET.register_namespace("hostplane", METADATA_NS)


def domain_xml(spec, domain_type, hostdevs, numa=None):
    """A diskless-or-not VM: q35, SeaBIOS, a qemu-xhci USB controller, virtio NICs; with
    `numa` (a host NUMA node {"id", "cpus"}) its vCPUs run on that node's CPUs and its
    memory comes from that node only."""
    root = ET.Element("domain", type=domain_type)
    ET.SubElement(root, "name").text = spec["name"]
    ET.SubElement(root, "memory", unit="MiB").text = str(spec["memory_mib"])
    vcpu = ET.SubElement(root, "vcpu")
    vcpu.text = str(spec["vcpus"])
    if numa is not None:
        vcpu.set("placement", "static")
        vcpu.set("cpuset", numa["cpus"])
        ET.SubElement(ET.SubElement(root, "numatune"), "memory", mode="strict",
                      nodeset=str(numa["id"]))
    if spec.get("op_id"):
        ET.SubElement(root, "metadata").append(_operation_element(spec["op_id"]))
    os_element = ET.SubElement(root, "os")
    os_type = ET.SubElement(os_element, "type")
    os_type.text = "hvm"
    if domain_type != "test":
        os_type.set("arch", "x86_64")
        os_type.set("machine", "q35")
        ET.SubElement(ET.SubElement(root, "features"), "acpi")
    ET.SubElement(os_element, "boot", dev="hd")
    devices = ET.SubElement(root, "devices")
    for index, disk in enumerate(spec.get("disks") or []):
        element = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(element, "driver", name="qemu", type=disk["format"])
        ET.SubElement(element, "source", file=disk["path"])
        ET.SubElement(element, "target", dev=f"vd{chr(ord('a') + index)}", bus="virtio")
    for network in spec.get("networks") or []:
        element = ET.SubElement(devices, "interface", type="bridge")
        ET.SubElement(element, "source", bridge=network["bridge"])
        ET.SubElement(element, "model", type="virtio")
    if domain_type != "test":
        devices.append(usb_controller_xml(0))
    for hostdev in hostdevs:
        devices.append(hostdev)
    return ET.tostring(root, encoding="unicode")


def hostdev_xml(kind, device, usb_bus=None):
    """`<hostdev mode='subsystem' managed='yes'>` for a PCI device (its `id`) or a USB one
    (`vendor_id`, `product_id` and, when known, `busnum`/`devnum`)."""
    element = ET.Element("hostdev", mode="subsystem", type=kind, managed="yes")
    source = ET.SubElement(element, "source")
    if kind == "pci":
        domain, bus, rest = device["id"].split(":")
        slot, function = rest.split(".")
        ET.SubElement(source, "address", domain=f"0x{domain}", bus=f"0x{bus}",
                      slot=f"0x{slot}", function=f"0x{function}")
    else:
        ET.SubElement(source, "vendor", id=f"0x{device['vendor_id']}")
        ET.SubElement(source, "product", id=f"0x{device['product_id']}")
        if device.get("busnum") is not None:
            ET.SubElement(source, "address", bus=str(device["busnum"]),
                          device=str(device["devnum"]))
        if usb_bus is not None:
            ET.SubElement(element, "address", type="usb", bus=str(usb_bus))
    return element


def usb_controller_xml(index):
    return ET.Element("controller", type="usb", index=str(index), model=USB_CONTROLLER,
                      ports=USB_PORTS)


def to_text(element):
    return ET.tostring(element, encoding="unicode")


def parse(text):
    """Parse XML read from libvirtd. It is libvirt's own output, but a domain's XML carries
    strings a tenant chose (names, descriptions), so entities and DTDs are refused anyway."""
    return SafeET.fromstring(text)


def read_domain(text):
    """{"name", "uuid", "op_id", "vcpus", "numa_node", "cpuset", "memory_mib", "hostdevs",
    "networks", "disks", "usb_controllers"}; `op_id` is None for a domain the controller did
    not make, `numa_node` None unless its memory is bound to exactly one node."""
    root = parse(text)
    memory = root.find("memory")
    return {
        "name": root.findtext("name"),
        "uuid": root.findtext("uuid"),
        "op_id": operation_of(root),
        "vcpus": int(root.findtext("vcpu") or 0),
        "numa_node": numa_node_of(root),
        "cpuset": _attr(root, "vcpu", "cpuset"),
        "memory_mib": _mib(memory) if memory is not None else 0,
        "hostdevs": hostdevs(root),
        "networks": [{"bridge": _attr(i, "source", "bridge"), "mac": _attr(i, "mac", "address")}
                     for i in root.iterfind("devices/interface")],
        "disks": [{"path": _attr(d, "source", "file") or _attr(d, "source", "dev"),
                   "target": _attr(d, "target", "dev")}
                  for d in root.iterfind("devices/disk") if d.get("device", "disk") == "disk"],
        "usb_controllers": [{"index": int(c.get("index", "0")), "model": c.get("model")}
                            for c in root.iterfind("devices/controller[@type='usb']")],
    }


def _operation_element(op_id):
    record = ET.Element(f"{{{METADATA_NS}}}vm")
    ET.SubElement(record, f"{{{METADATA_NS}}}op").text = op_id
    return record


def operation_metadata(op_id):
    """The metadata element for libvirt's setMetadata (it adds the namespace itself)."""
    record = ET.Element("vm")
    ET.SubElement(record, "op").text = op_id
    return ET.tostring(record, encoding="unicode")


def operation_of(root):
    """The controller's operation id recorded in a parsed domain's metadata, or None."""
    return root.findtext(f"metadata/{{{METADATA_NS}}}vm/{{{METADATA_NS}}}op")


def numa_node_of(root):
    """The one host NUMA node a parsed domain's memory is bound to (`<numatune><memory
    nodeset>` naming a single node, strict or not), else None."""
    memory = root.find("numatune/memory")
    nodeset = memory.get("nodeset") if memory is not None else None
    try:
        nodes = parse_cpulist(nodeset) if nodeset else []
    except ValueError:
        return None
    return nodes[0] if len(nodes) == 1 else None


def hostdevs(root):
    """Every subsystem hostdev: {"type": "pci", "id", "alias"} or USB vendor/product/bus/device."""
    found = []
    for element in root.iterfind("devices/hostdev[@mode='subsystem']"):
        kind = element.get("type")
        source = element.find("source")
        if source is None:
            continue
        alias = _attr(element, "alias", "name")
        address = source.find("address")
        if kind == "pci" and address is not None:
            found.append({"type": "pci", "alias": alias, "id": "%04x:%02x:%02x.%x" % tuple(
                int(address.get(key, "0"), 16) for key in ("domain", "bus", "slot", "function"))})
        elif kind == "usb":
            found.append({"type": "usb", "alias": alias,
                          "vendor_id": _hex4(_attr(source, "vendor", "id")),
                          "product_id": _hex4(_attr(source, "product", "id")),
                          "busnum": _int(address.get("bus")) if address is not None else None,
                          "devnum": _int(address.get("device")) if address is not None else None})
    return found


def _mib(element):
    scale = {"b": 1 / 1048576, "bytes": 1 / 1048576, "kib": 1 / 1024, "k": 1 / 1024,
             "mib": 1, "m": 1, "gib": 1024, "g": 1024}
    return int(int(element.text) * scale.get(element.get("unit", "KiB").lower(), 1 / 1024))


def _attr(element, child, name):
    found = element.find(child)
    return None if found is None else found.get(name)


def _hex4(text):
    return None if text is None else "%04x" % int(text, 16)


def _int(text):
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None
