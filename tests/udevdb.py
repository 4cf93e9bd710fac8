"""A udev database dump (`udevadm info --export-db`) laid out as the sysfs tree it describes.

For each PCI function the database holds its path under `/sys` (so the real nesting
under root ports and switches) and the kernel's `uevent` variables. That is what this
writes: the directory, `uevent` with the kernel's own keys, the `vendor`, `device`,
`subsystem_*` and `class` files that say the same ids in sysfs' words (lspci reads
those), the `driver` link and the `bus/pci/devices` entry. The dump has no config
space, NUMA node, IOMMU group, revision or link speed, so the tree has none either.
"""

import gzip
import os

from tests.synthetic import _link, _write

# What the kernel itself puts in a PCI function's uevent (udev adds the ID_* keys).
KERNEL_PCI_KEYS = ("DRIVER", "PCI_CLASS", "PCI_ID", "PCI_SUBSYS_ID", "PCI_SLOT_NAME", "MODALIAS")


def read_export_db(path):
    """[(devpath, {property: value})] of every device in a (gzipped) export-db dump."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    devices = []
    for block in text.split("\n\n"):
        devpath, properties = None, {}
        for line in block.splitlines():
            if line.startswith("P: "):
                devpath = line[3:]
            elif line.startswith("E: "):
                key, _, value = line[3:].partition("=")
                properties[key] = value
        if devpath:
            devices.append((devpath, properties))
    return devices


def pci_functions(devices):
    return [(path, props) for path, props in devices if props.get("SUBSYSTEM") == "pci"]


def write_pci_tree(devices, root):
    """Write the PCI functions of `devices` under `root`; returns `root`."""
    root = str(root)
    for devpath, props in pci_functions(devices):
        base = root + devpath
        os.makedirs(base, exist_ok=True)
        _write(base, "uevent", "\n".join(f"{key}={props[key]}" for key in KERNEL_PCI_KEYS
                                         if key in props))
        vendor, device = props["PCI_ID"].lower().split(":")
        sub_vendor, sub_device = props["PCI_SUBSYS_ID"].lower().split(":")
        for name, value in (("vendor", vendor), ("device", device),
                            ("subsystem_vendor", sub_vendor), ("subsystem_device", sub_device)):
            _write(base, name, f"0x{value}")
        _write(base, "class", f"0x{int(props['PCI_CLASS'], 16):06x}")
        if props.get("DRIVER"):
            driver_dir = os.path.join(root, "bus/pci/drivers", props["DRIVER"])
            os.makedirs(driver_dir, exist_ok=True)
            _link(os.path.join(base, "driver"), driver_dir)
        _link(os.path.join(root, "bus/pci/devices", props["PCI_SLOT_NAME"]), base)
    return root
