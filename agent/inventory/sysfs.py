"""The one place that knows sysfs layout, rooted anywhere.

`SysfsTree(root)` reads the live `/sys` or a captured tree (`[host] sysfs_root`), so
the same code serves production, tests and benchmarks. Each PCI function is read with
a handful of syscalls: its `uevent` carries ids, class and driver in one read.
"""

import os

USB_ATTRIBUTES = ("idVendor", "idProduct", "manufacturer", "product", "serial", "version",
                  "speed", "busnum", "devnum", "bDeviceClass")


class SysfsTree:
    def __init__(self, root="/sys"):
        self.root = root.rstrip("/") or "/"
        self.pci_dir = os.path.join(self.root, "bus", "pci", "devices")
        self.usb_dir = os.path.join(self.root, "bus", "usb", "devices")

    # --- PCI ---------------------------------------------------------------------
    def pci_addresses(self):
        try:
            return sorted(os.listdir(self.pci_dir))
        except FileNotFoundError:
            return []

    def read_pci_functions(self):
        records = []
        for address in self.pci_addresses():
            record = self.read_pci_function(address)
            if record is not None:
                records.append(record)
        return records

    def read_pci_function(self, address):
        """Raw record of one function, or None if it vanished while being read."""
        base = f"{self.pci_dir}/{address}"
        event = _uevent(f"{base}/uevent")
        if event is None:
            return None
        vendor_id, _, device_id = event.get("PCI_ID", ":").partition(":")
        sub_vendor, _, sub_device = event.get("PCI_SUBSYS_ID", ":").partition(":")
        class_code = event.get("PCI_CLASS")
        if not vendor_id or class_code is None:
            vendor_id = _hex_attr(base, "vendor")
            device_id = _hex_attr(base, "device")
            sub_vendor = _hex_attr(base, "subsystem_vendor")
            sub_device = _hex_attr(base, "subsystem_device")
            class_code = _hex_attr(base, "class")
        if not vendor_id or class_code is None:
            return None
        driver = event.get("DRIVER") or _link_name(f"{base}/driver")
        record = {
            "address": address,
            "vendor_id": vendor_id.lower().zfill(4),
            "device_id": device_id.lower().zfill(4),
            "subsystem_vendor_id": sub_vendor.lower().zfill(4) if sub_vendor else None,
            "subsystem_device_id": sub_device.lower().zfill(4) if sub_device else None,
            "class_code": class_code.lower().zfill(6),
            "driver": driver,
            "numa_node": _numa_node(base),
            "iommu_group": _group_number(base),
            "physfn": _link_name(f"{base}/physfn"),
        }
        total_vfs = _int_attr(base, "sriov_totalvfs")
        if total_vfs is not None:
            record["sriov_totalvfs"] = total_vfs
            record["sriov_numvfs"] = _int_attr(base, "sriov_numvfs") or 0
            record["virtfns"] = [_link_name(os.path.join(base, entry))
                                 for entry in os.listdir(base) if entry.startswith("virtfn")]
        return record

    # --- USB (captured trees; the live host is read through udev) ----------------
    def usb_device_names(self):
        try:
            return sorted(name for name in os.listdir(self.usb_dir) if ":" not in name)
        except FileNotFoundError:
            return []

    def read_usb_attributes(self, sys_name):
        base = os.path.join(self.usb_dir, sys_name)
        if not os.path.exists(os.path.join(base, "idVendor")):
            return None
        return {name: _read(os.path.join(base, name)) for name in USB_ATTRIBUTES}

    # --- host ----------------------------------------------------------------------
    def iommu_group_count(self):
        try:
            return len(os.listdir(os.path.join(self.root, "kernel", "iommu_groups")))
        except FileNotFoundError:
            return 0

    def module_loaded(self, name):
        return os.path.isdir(os.path.join(self.root, "module", name))


def _read(path):
    # os.open/os.read: a third of the cost of open() for these tiny files.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 65536).decode("utf-8", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def _uevent(path):
    text = _read(path)
    if text is None:
        return None
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def _hex_attr(base, name):
    text = _read(f"{base}/{name}")
    if not text:
        return None
    return text[2:] if text.lower().startswith("0x") else text


def _int_attr(base, name):
    text = _read(f"{base}/{name}")
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _numa_node(base):
    node = _int_attr(base, "numa_node")
    return node if node is not None and node >= 0 else None


def _link_name(path):
    try:
        return os.readlink(path).rsplit("/", 1)[-1]
    except OSError:
        return None


def _group_number(base):
    name = _link_name(f"{base}/iommu_group")
    try:
        return int(name) if name is not None else None
    except ValueError:
        return None
