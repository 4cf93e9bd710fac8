"""Hosts described in code, written out as sysfs trees and umockdev recordings.

This machine has no IOMMU, no USB and only virtio devices, so the hardware tests need
other hosts: a description (`Host`) of PCI functions and USB devices is written either
as a plain directory tree (`write_sysfs_tree`, for `sysfs_root` and benchmarks) or as a
umockdev recording (`write_umockdev`, replayed to pyudev by `umockdev-run`). Both carry
what the kernel shows: attribute files, `uevent`, and `driver`/`iommu_group`/`physfn`/
`virtfn*` links. The hosts themselves live in `tests/hosts.py`.
"""

import os
from dataclasses import dataclass, field


@dataclass
class PciFunction:
    address: str
    vendor: str
    device: str
    class_code: str
    driver: str | None = None
    iommu_group: int | None = None
    numa_node: int = -1
    parent: str | None = None          # upstream bridge address; None = root bus
    subsystem: tuple = ("0000", "0000")
    sriov_totalvfs: int | None = None
    virtfns: list = field(default_factory=list)
    physfn: str | None = None
    link: dict | None = None           # {"current_link_speed": "16.0 GT/s PCIe", ...}


@dataclass
class UsbDevice:
    sys_name: str                      # "usb1" (root hub) or port path "1-1.2"
    vendor: str
    product_id: str
    bcd_usb: str                       # "0210"
    speed: str                         # "480"
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None
    device_class: str = "00"
    devnum: int = 1

    @property
    def busnum(self):
        name = self.sys_name
        return int(name[3:]) if name.startswith("usb") else int(name.split("-", 1)[0])

    @property
    def parent_name(self):
        if self.sys_name.startswith("usb"):
            return None
        bus, _, ports = self.sys_name.partition("-")
        return f"usb{bus}" if "." not in ports else f"{bus}-{ports.rsplit('.', 1)[0]}"


@dataclass
class Host:
    pci: list = field(default_factory=list)
    usb: list = field(default_factory=list)
    usb_controller: str | None = None  # PCI address the root hubs hang off
    cmdline: str = "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro intel_iommu=on iommu=pt"
    numa_nodes: list = field(default_factory=list)   # [(id, "0-15", memory MiB)]

    def function(self, address):
        return next(f for f in self.pci if f.address == address)

    def add_usb(self, *devices):
        self.usb.extend(devices)


# --- paths -------------------------------------------------------------------------------
def pci_device_path(host, function):
    """`/devices/pci0000:00/0000:00:01.0/0000:01:00.0`: children nest under bridges."""
    chain = []
    current = function
    while current is not None:
        chain.append(current.address)
        current = host.function(current.parent) if current.parent else None
    domain, bus = chain[-1].split(":")[:2]
    return "/devices/pci%s:%s/%s" % (domain, bus, "/".join(reversed(chain)))


def usb_device_path(host, device):
    chain = []
    current = device
    by_name = {d.sys_name: d for d in host.usb}
    while current is not None:
        chain.append(current.sys_name)
        current = by_name.get(current.parent_name) if current.parent_name else None
    controller = host.function(host.usb_controller)
    return pci_device_path(host, controller) + "/" + "/".join(reversed(chain))


def pci_uevent(function):
    lines = [f"PCI_CLASS={function.class_code.upper().lstrip('0') or '0'}",
             f"PCI_ID={function.vendor.upper()}:{function.device.upper()}",
             f"PCI_SUBSYS_ID={function.subsystem[0].upper()}:{function.subsystem[1].upper()}",
             f"PCI_SLOT_NAME={function.address}",
             "MODALIAS=pci:v0000%sd0000%ssv0000%ssd0000%sbc%ssc%si%s" % (
                 function.vendor.upper(), function.device.upper(),
                 function.subsystem[0].upper(), function.subsystem[1].upper(),
                 function.class_code[0:2].upper(), function.class_code[2:4].upper(),
                 function.class_code[4:6].upper())]
    if function.driver:
        lines.insert(0, f"DRIVER={function.driver}")
    return lines


def pci_attributes(function):
    attrs = {
        "vendor": f"0x{function.vendor}", "device": f"0x{function.device}",
        "subsystem_vendor": f"0x{function.subsystem[0]}",
        "subsystem_device": f"0x{function.subsystem[1]}",
        "class": f"0x{function.class_code}", "numa_node": str(function.numa_node),
        "revision": "0xa1", "enable": "1" if function.driver else "0",
    }
    if function.link:
        attrs.update(function.link)
    if function.sriov_totalvfs is not None:
        attrs["sriov_totalvfs"] = str(function.sriov_totalvfs)
        attrs["sriov_numvfs"] = str(len(function.virtfns))
    return attrs


def pci_config(function):
    """The first 64 bytes of config space (what an unprivileged reader sees)."""
    config = bytearray(64)
    config[0:2] = int(function.vendor, 16).to_bytes(2, "little")
    config[2:4] = int(function.device, 16).to_bytes(2, "little")
    config[4:6] = (0x0407 if function.driver else 0).to_bytes(2, "little")
    config[6:8] = (0x0010).to_bytes(2, "little")
    config[8] = 0xa1
    config[9:12] = bytes.fromhex(function.class_code)[::-1]
    bridge = function.class_code.startswith("0604")
    config[0x0e] = 0x01 if bridge else (0x80 if function.address.endswith(".0") else 0x00)
    if not bridge:
        config[0x2c:0x2e] = int(function.subsystem[0], 16).to_bytes(2, "little")
        config[0x2e:0x30] = int(function.subsystem[1], 16).to_bytes(2, "little")
    return bytes(config)


def pci_links(function):
    """{link name: path relative to /sys} (made relative when written)."""
    links = {}
    if function.driver:
        links["driver"] = f"bus/pci/drivers/{function.driver}"
    if function.iommu_group is not None:
        links["iommu_group"] = f"kernel/iommu_groups/{function.iommu_group}"
    return links


def usb_attributes(device):
    attrs = {"idVendor": device.vendor, "idProduct": device.product_id,
             "version": f"{int(device.bcd_usb[:2], 16):2x}.{device.bcd_usb[2:]}",
             "speed": device.speed,
             "busnum": str(device.busnum), "devnum": str(device.devnum),
             "bDeviceClass": device.device_class, "devpath": device.sys_name.partition("-")[2] or "0",
             "maxchild": "4" if device.device_class == "09" else "0"}
    for name in ("manufacturer", "product", "serial"):
        value = getattr(device, name)
        if value is not None:
            attrs[name] = value
    return attrs


def usb_uevent(device):
    return ["DEVTYPE=usb_device", "DRIVER=usb",
            f"PRODUCT={int(device.vendor, 16):x}/{int(device.product_id, 16):x}/0",
            f"TYPE={int(device.device_class, 16)}/0/0",
            f"BUSNUM={device.busnum:03d}", f"DEVNUM={device.devnum:03d}",
            f"DEVNAME=bus/usb/{device.busnum:03d}/{device.devnum:03d}"]


# --- writers -----------------------------------------------------------------------------
def write_sysfs_tree(host, root):
    """Materialise `host` as a plain directory tree usable as `sysfs_root`."""
    root = str(root)
    for function in host.pci:
        path = pci_device_path(host, function)
        base = root + path
        os.makedirs(base, exist_ok=True)
        _write(base, "uevent", "\n".join(pci_uevent(function) + ["SUBSYSTEM=pci"]))
        for name, value in pci_attributes(function).items():
            _write(base, name, value)
        with open(os.path.join(base, "config"), "wb") as handle:
            handle.write(pci_config(function))
        links = pci_links(function)
        if function.physfn:
            links["physfn"] = pci_device_path(host, host.function(function.physfn))[1:]
        for index, vf in enumerate(function.virtfns):
            links[f"virtfn{index}"] = pci_device_path(host, host.function(vf))[1:]
        for name, target in links.items():
            _link(os.path.join(base, name), os.path.join(root, target))
        if function.driver:
            os.makedirs(os.path.join(root, "bus/pci/drivers", function.driver), exist_ok=True)
        if function.iommu_group is not None:
            group_dir = os.path.join(root, "kernel/iommu_groups", str(function.iommu_group), "devices")
            os.makedirs(group_dir, exist_ok=True)
            _link(os.path.join(group_dir, function.address), base)
        _link(os.path.join(root, "bus/pci/devices", function.address), base)
    for device in host.usb:
        base = root + usb_device_path(host, device)
        os.makedirs(base, exist_ok=True)
        _write(base, "uevent", "\n".join(usb_uevent(device) + ["SUBSYSTEM=usb"]))
        for name, value in usb_attributes(device).items():
            _write(base, name, value)
        _link(os.path.join(root, "bus/usb/devices", device.sys_name), base)
    for node_id, cpus, memory_mib in host.numa_nodes:
        base = os.path.join(root, "devices/system/node", f"node{node_id}")
        os.makedirs(base, exist_ok=True)
        _write(base, "cpulist", cpus)
        _write(base, "meminfo", f"Node {node_id} MemTotal:       {memory_mib * 1024} kB\n"
                                f"Node {node_id} MemFree:        {memory_mib * 512} kB")
    os.makedirs(os.path.join(root, "kernel/iommu_groups"), exist_ok=True)
    return root


def write_proc(proc_dir, host=None, cmdline=None, threads=64, memory_mib=524288):
    """A /proc with cmdline, cpuinfo and meminfo, for `[host] proc_root`."""
    os.makedirs(proc_dir, exist_ok=True)
    _write(proc_dir, "cmdline", cmdline if cmdline is not None else host.cmdline)
    blocks = [f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) "
              f"Gold 6330 CPU @ 2.00GHz\nphysical id\t: {i % 2}\ncore id\t: {i // 4}\n"
              for i in range(threads)]
    _write(proc_dir, "cpuinfo", "\n".join(blocks))
    _write(proc_dir, "meminfo", f"MemTotal:       {memory_mib * 1024} kB\n")
    return proc_dir


def write_umockdev(host, path):
    """The same host as a umockdev recording (parents before children)."""
    blocks = []
    for function in host.pci:
        device_path = pci_device_path(host, function)
        lines = [f"P: {device_path}"]
        lines += [f"E: {line}" for line in pci_uevent(function) + ["SUBSYSTEM=pci"]]
        lines += [f"A: {name}={_escape(value)}\\n" for name, value in
                  sorted(pci_attributes(function).items())]
        lines.append(f"H: config={pci_config(function).hex().upper()}")
        links = pci_links(function)
        if function.physfn:
            links["physfn"] = pci_device_path(host, host.function(function.physfn))[1:]
        for index, vf in enumerate(function.virtfns):
            links[f"virtfn{index}"] = pci_device_path(host, host.function(vf))[1:]
        depth = device_path.count("/")
        lines += [f"L: {name}={'../' * depth}{target}" for name, target in sorted(links.items())]
        blocks.append((device_path, lines))
    for device in host.usb:
        device_path = usb_device_path(host, device)
        lines = [f"P: {device_path}", f"N: bus/usb/{device.busnum:03d}/{device.devnum:03d}"]
        lines += [f"E: {line}" for line in usb_uevent(device) + ["SUBSYSTEM=usb"]]
        lines += [f"A: {name}={_escape(value)}\\n" for name, value in
                  sorted(usb_attributes(device).items())]
        blocks.append((device_path, lines))
    blocks.sort(key=lambda block: (block[0].count("/"), block[0]))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n\n".join("\n".join(lines) for _, lines in blocks) + "\n")
    return path


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n")


def _write(directory, name, value):
    with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
        handle.write(f"{value}\n")


def _link(path, target):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(os.path.relpath(target, os.path.dirname(path)), path)


def small_gpu_host():
    """Shortcut to `tests.hosts.small_gpu_host` (the host most tests start from)."""
    from tests.hosts import small_gpu_host as build
    return build()
