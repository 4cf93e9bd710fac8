"""Host facts and IOMMU state, read from /proc and sysfs (both roots injectable)."""

import os
import platform
import socket

_ON = ("intel_iommu=on", "amd_iommu=on", "amd_iommu=force_isolation", "iommu=force")
_OFF = ("intel_iommu=off", "amd_iommu=off", "iommu=off")


def iommu_state(cmdline, group_count):
    """{"kernel_enabled", "ready", "groups"} from the kernel command line and sysfs.

    Enabled when the command line turns it on, or leaves it alone and the kernel has
    built groups anyway (on by default); ready when groups exist to pass through.
    """
    words = cmdline.split()
    if any(w in words for w in _OFF):
        enabled = False
    elif any(w in words for w in _ON):
        enabled = True
    else:
        enabled = group_count > 0
    return {"kernel_enabled": enabled, "ready": enabled and group_count > 0,
            "groups": group_count, "cmdline_flags": [w for w in words if "iommu" in w]}


def read_text(path, default=""):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return default


def host_iommu(sysfs, proc_root="/proc"):
    """The IOMMU state alone: what every PCI attach asks, without reading cpuinfo."""
    cmdline = read_text(os.path.join(proc_root, "cmdline")).strip()
    return iommu_state(cmdline, sysfs.iommu_group_count())


def host_facts(sysfs, proc_root="/proc"):
    cpuinfo = read_text(os.path.join(proc_root, "cpuinfo"))
    model, threads, cores = None, 0, set()
    physical = core = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            threads += 1
        elif key == "model name" and model is None:
            model = value
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
            cores.add((physical, core))
    memory_kib = 0
    for line in read_text(os.path.join(proc_root, "meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    return {
        "hostname": socket.gethostname(),
        "cpu": {"model": model, "cores": len(cores) or threads, "threads": threads,
                "arch": platform.machine()},
        "memory_mib": memory_kib // 1024,
        "kernel": platform.release(),
        "iommu": host_iommu(sysfs, proc_root),
        "numa_nodes": sysfs.numa_nodes(),
        "kvm": os.path.exists("/dev/kvm"),
    }


def vfio_module_state(sysfs):
    """"loaded", "available" (modprobe would work) or "missing"."""
    if sysfs.module_loaded("vfio_pci"):
        return "loaded"
    release = platform.release()
    modules_dep = read_text(f"/lib/modules/{release}/modules.dep")
    builtin = read_text(f"/lib/modules/{release}/modules.builtin")
    if "vfio-pci.ko" in modules_dep or "vfio-pci.ko" in builtin:
        return "available"
    return "missing"
