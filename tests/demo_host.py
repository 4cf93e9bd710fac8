"""The demo host that `scripts/run-local --demo` serves, so the GPU and USB tables can be
seen and tried on a machine with neither: the two-GPU host of `tests.hosts` written as a
sysfs tree (plus a GPU that cannot be passed through) and a /proc under DIR, and an empty node for libvirt's in-memory test driver
(VMs defined there are bookkeeping, nothing runs).

    python -m tests.demo_host DIR     # prints the agent's environment, one VAR=value a line
"""

import os
import sys

from tests.hosts import INTEL, NVIDIA, SAMSUNG, small_gpu_host

PLX = "10b5"   # Broadcom/PLX PCIe switch
from tests.synthetic import PciFunction, write_proc, write_sysfs_tree

HOST_ID = "demo-gpu-server"


def demo_host():
    """The two-GPU host (two Tesla T4 with their audio functions, a USB stick and a
    keyboard), plus an older GPU with no IOMMU group: one a newcomer sees refused, and why."""
    host = small_gpu_host()
    host.pci.append(PciFunction("0000:d8:00.0", NVIDIA, "1db6", "030200", "nvidia", None, 1))
    # Two sockets (the topology picture's NUMA nodes), and on the second a PCIe switch with
    # two NVMe drives behind its downstream ports.
    host.numa_nodes = [(0, "0-15", 131072), (1, "16-31", 131072)]
    switch = [("0000:c8:00.0", "2030", "060400", "pcieport", None),
              ("0000:c9:00.0", "8796", "060400", "pcieport", "0000:c8:00.0"),
              ("0000:ca:00.0", "8796", "060400", "pcieport", "0000:c9:00.0"),
              ("0000:ca:01.0", "8796", "060400", "pcieport", "0000:c9:00.0"),
              ("0000:cb:00.0", "a80a", "010802", "nvme", "0000:ca:00.0"),
              ("0000:cc:00.0", "a80a", "010802", "nvme", "0000:ca:01.0")]
    for index, (address, device, class_code, driver, parent) in enumerate(switch):
        vendor = SAMSUNG if driver == "nvme" else (PLX if device == "8796" else INTEL)
        host.pci.append(PciFunction(address, vendor, device, class_code, driver, 40 + index,
                                    1, parent=parent))
    return host


def write_demo_host(directory):
    """Write the tree once (kept across restarts); the agent settings that serve it."""
    host = demo_host()
    sysfs, proc = os.path.join(directory, "sys"), os.path.join(directory, "proc")
    if not os.path.isdir(sysfs):
        write_sysfs_tree(host, sysfs)
        write_proc(proc, host, threads=32, memory_mib=262144)
    node = os.path.join(directory, "libvirt-node.xml")
    if not os.path.exists(node):
        with open(node, "w", encoding="ascii") as handle:
            handle.write("<node/>\n")
    return {"HOSTPLANE_HOST_ID": HOST_ID, "HOSTPLANE_HOST_SYSFS_ROOT": sysfs,
            "HOSTPLANE_HOST_PROC_ROOT": proc, "HOSTPLANE_HOST_WATCH_UDEV": "false",
            "HOSTPLANE_LIBVIRT_URI": f"test://{node}",
            "HOSTPLANE_HOST_STATE_DIR": os.path.join(directory, "state")}


if __name__ == "__main__":
    for name, value in write_demo_host(os.path.abspath(sys.argv[1])).items():
        print(f"{name}={value}")
