"""The one place that knows sysfs layout, rooted anywhere.

`SysfsTree(root)` reads the live `/sys` or a captured tree (`[host] sysfs_root`), so
the same code serves production, tests and benchmarks. Each PCI function is read with
a handful of syscalls: its `uevent` carries ids, class and driver in one read; trees
copied by capture tools often have no `uevent`, and then the attribute files do.
A function that cannot be read at all is reported with its error, never dropped.
"""

import os

from hostplane.core.ids import PCI_FUNCTION_NAME
# config space bytes read: the header type is byte 0x0E
_CONFIG_HEAD = 64
_LINK_ATTRIBUTES = (("current_speed", "current_link_speed"), ("current_width", "current_link_width"),
                    ("max_speed", "max_link_speed"), ("max_width", "max_link_width"))


class UnreadableTree(OSError):
    """The sysfs root or its PCI directory cannot be read at all."""

USB_ATTRIBUTES = ("idVendor", "idProduct", "manufacturer", "product", "serial", "version",
                  "speed", "busnum", "devnum", "bDeviceClass")


class SysfsTree:
    def __init__(self, root="/sys"):
        self.root = root.rstrip("/") or "/"
        self.pci_dir = os.path.join(self.root, "bus", "pci", "devices")
        self.usb_dir = os.path.join(self.root, "bus", "usb", "devices")

    # --- PCI ---------------------------------------------------------------------
    def check_readable(self):
        """Raise UnreadableTree with a one-line reason when the root is no sysfs at all."""
        if not os.path.isdir(self.root):
            raise UnreadableTree(f"{self.root}: no such directory")
        if os.path.exists(self.pci_dir) and not os.access(self.pci_dir, os.R_OK | os.X_OK):
            raise UnreadableTree(f"{self.pci_dir}: permission denied")

    def pci_addresses(self):
        try:
            return sorted(os.listdir(self.pci_dir))
        except FileNotFoundError:
            return []

    def read_pci_functions(self):
        """(records, errors): errors are {"id", "error"} for entries that could not be read."""
        records, errors = [], []
        for address in self.pci_addresses():
            try:
                record = self.read_pci_function(address, strict=True)
            except UnreadableFunction as exc:
                errors.append({"kind": "pci", "id": address, "error": str(exc)})
                continue
            if record is not None:
                records.append(record)
        return records, errors

    def read_pci_function(self, address, strict=False):
        """Raw record of one function, or None if it vanished while being read.

        With `strict`, a function present but unreadable raises UnreadableFunction.
        """
        base = f"{self.pci_dir}/{address}"
        if not PCI_FUNCTION_NAME.match(address):
            return _unreadable(strict, f"{address!r} is not a PCI function's name")
        event = _uevent(f"{base}/uevent") or {}
        if not event and not os.path.isdir(base):
            return None   # vanished (hot-unplug) while being read
        vendor_id, _, device_id = event.get("PCI_ID", ":").partition(":")
        sub_vendor, _, sub_device = event.get("PCI_SUBSYS_ID", ":").partition(":")
        class_code = event.get("PCI_CLASS")
        if not vendor_id or class_code is None:
            vendor_id = _hex_attr(base, "vendor")
            device_id = _hex_attr(base, "device")
            sub_vendor = _hex_attr(base, "subsystem_vendor")
            sub_device = _hex_attr(base, "subsystem_device")
            class_code = _hex_attr(base, "class")
        if not vendor_id or not device_id or class_code is None:
            missing = [name for name, value in (("vendor", vendor_id), ("device", device_id),
                                                ("class", class_code)) if not value]
            return _unreadable(strict, f"no uevent and no readable {', '.join(missing)} file")
        driver = event.get("DRIVER") or _link_name(f"{base}/driver")
        code = class_code.lower().zfill(6)
        record = {
            "address": address,
            "vendor_id": vendor_id.lower().zfill(4),
            "device_id": device_id.lower().zfill(4),
            "subsystem_vendor_id": sub_vendor.lower().zfill(4) if sub_vendor else None,
            "subsystem_device_id": sub_device.lower().zfill(4) if sub_device else None,
            "class_code": code,
            "driver": driver,
            "numa_node": _numa_node(base),
            "iommu_group": _group_number(base),
            "physfn": _link_name(f"{base}/physfn"),
            # Only class 06 can mislead (an NVSwitch is 0680 yet an endpoint); a type-1/2
            # header outside class 06 breaks the PCI spec, so the others skip the read.
            "header_type": _header_type(base) if code.startswith("06") else None,
            "upstream": _upstream(base, address),
            "link": _link(base),
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

    def numa_nodes(self):
        """[{"id", "cpus", "memory_mib"}] from `devices/system/node/node*`, by id; empty
        when the kernel shows no nodes (built without NUMA, or a captured tree)."""
        base = os.path.join(self.root, "devices", "system", "node")
        try:
            names = os.listdir(base)
        except OSError:
            return []
        nodes = []
        for name in names:
            if not (name.startswith("node") and name[4:].isdigit()):
                continue
            directory = os.path.join(base, name)
            nodes.append({"id": int(name[4:]), "cpus": _read(f"{directory}/cpulist") or "",
                          "memory_mib": _node_memory_mib(_read(f"{directory}/meminfo"))})
        return sorted(nodes, key=lambda node: node["id"])


class UnreadableFunction(OSError):
    """A PCI function listed in the tree whose ids or class cannot be read."""


def _unreadable(strict, message):
    if strict:
        raise UnreadableFunction(message)
    return None


def _header_type(base):
    """Config byte 0x0E without the multi-function bit, or None when config is unreadable."""
    try:
        fd = os.open(f"{base}/config", os.O_RDONLY)
    except OSError:
        return None
    try:
        head = os.read(fd, _CONFIG_HEAD)
    except OSError:
        return None
    finally:
        os.close(fd)
    return head[0x0E] & 0x7F if len(head) > 0x0E else None


def pci_functions_on_path(path):
    """The PCI functions a sysfs path really passes through, root port first."""
    try:
        real = os.path.realpath(path)
    except OSError:
        return []
    return _pci_functions_in(real)


def _pci_functions_in(path):
    return [part for part in path.split("/") if PCI_FUNCTION_NAME.match(part)]


def _upstream(base, address):
    """PCI functions above this one, from the `bus/pci/devices` link's target (one
    readlink, not a realpath walk); a tree copied without links has no chain."""
    try:
        target = os.readlink(base)
    except OSError:
        return []
    chain = _pci_functions_in(target)
    return chain[:-1] if chain and chain[-1] == address else []


def _link(base):
    """PCIe link speed and width, current and maximum, as sysfs words them; None if not PCIe."""
    first_key, first_name = _LINK_ATTRIBUTES[0]
    first = _read(f"{base}/{first_name}")
    if first is None:      # conventional PCI: no link files (one failed open, not four)
        return None
    values = {key: first if key == first_key else _read(f"{base}/{name}")
              for key, name in _LINK_ATTRIBUTES}
    for key in ("current_width", "max_width"):
        try:
            values[key] = int(values[key]) if values[key] else None
        except ValueError:
            values[key] = None
    return values


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
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


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


def _node_memory_mib(meminfo):
    """MemTotal of a node's meminfo ("Node 0 MemTotal:  24683792 kB") in MiB."""
    for line in (meminfo or "").splitlines():
        words = line.split()
        if len(words) >= 4 and words[2] == "MemTotal:" and words[3].isdigit():
            return int(words[3]) // 1024
    return 0


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
