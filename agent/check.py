"""`hostplane-agent check`: could this host pass a GPU through, and if not, what to change.

Also its TLS files: a certificate that expired fails (with the date), one that expires
within 30 days warns; clients that verify the agent would refuse it otherwise.
"""

import os

from agent.hostinfo import host_facts, vfio_module_state
from agent.inventory.sysfs import SysfsTree
from agent.virt.connection import libvirt, libvirt_probe
from agent.virt.holders import conflicts, scan
from hostplane.service import RENEW_HINT, certificate_checks
from hostplane.tables import table_lines


def readiness_rows(config, libvirt_status=None):
    """[(check, ok, observed, what to change)] for the readiness table."""
    sysfs = SysfsTree(config["host"]["sysfs_root"])
    facts = host_facts(sysfs, config["host"]["proc_root"])
    iommu = facts["iommu"]
    vfio = vfio_module_state(sysfs)
    libvirt_status = libvirt_status or libvirt_probe(config["libvirt"]["uri"])
    cpu_flags = _cpu_vendor_hint(config["host"]["proc_root"])
    param = "amd_iommu=on iommu=pt" if cpu_flags == "amd" else "intel_iommu=on iommu=pt"
    firmware = "AMD-Vi/IOMMU" if cpu_flags == "amd" else "VT-d"
    return [
        ("IOMMU enabled in kernel", iommu["kernel_enabled"],
         " ".join(iommu["cmdline_flags"]) or "no iommu flag on the command line",
         f"add '{param}' to the kernel command line (GRUB_CMDLINE_LINUX), update-grub, reboot"),
        ("IOMMU groups present", iommu["ready"], f"{iommu['groups']} groups",
         f"enable {firmware} in the BIOS/firmware setup, and the kernel parameter above; reboot"),
        ("vfio-pci module", vfio in ("loaded", "available"), vfio,
         "install the kernel's modules package, then 'modprobe vfio-pci'"),
        ("libvirt reachable", libvirt_status["ok"],
         libvirt_status["version"] or libvirt_status["error"] or "unknown",
         f"start libvirtd, check [libvirt] uri ({libvirt_status['uri']})"),
        device_conflict_row(config, libvirt_status["ok"]),
    ]


def device_conflict_row(config, reachable=True):
    """A device in more than one domain's XML: libvirt refuses to start the second VM,
    and the agent refuses to attach it anywhere until an operator picks one."""
    section = config["libvirt"]
    found = {}
    if libvirt is not None and reachable:
        try:
            conn = libvirt.openReadOnly(section["uri"])
            try:
                found = conflicts(scan(conn, section["domain_prefix"]))
            finally:
                conn.close()
        except libvirt.libvirtError:
            pass      # the "libvirt reachable" row says why
    observed = "; ".join(f"{key} in {', '.join(vms)}" for key, vms in sorted(found.items()))
    return ("device in one VM only", not found, observed or "none",
            "detach each listed device from all but one VM (virsh detach-device --config)")


def tls_rows(config):
    """The agent's own certificate and the CA it verifies the controller with."""
    files = [("TLS certificate", config["server"]["tls_cert"]),
             ("controller CA", config["host"]["controller_ca"])]
    return [(label, {"ok": True, "warn": "warn"}.get(status, False), sentence, RENEW_HINT)
            for label, status, sentence in certificate_checks(files)]


def run_check(config, out=print):
    """Print the table; exit status 1 when a GPU could not be passed through or a
    certificate has expired."""
    gpu_rows = readiness_rows(config)
    rows = gpu_rows + tls_rows(config)
    for line in table_lines(rows, [("CHECK", lambda row: row[0]),
                                   ("OK", lambda row: "warn" if row[1] == "warn"
                                    else "yes" if row[1] else "NO"),
                                   ("OBSERVED", lambda row: row[2])]):
        out(line)
    kvm_note(out)
    failed = [row for row in rows if not row[1]]
    if failed:
        out("")
        out("A GPU could not be passed through on this host. To change:"
            if any(not row[1] for row in gpu_rows) else "Not ready to serve. To change:")
        for name, _, _, fix in failed:
            out(f"- {name}: {fix}")
        return 1
    out("")
    out("Ready: GPUs on this host can be passed through.")
    return 0


def kvm_note(out=print):
    """KVM only makes guests fast; passthrough itself needs IOMMU + vfio (TCG works too)."""
    if not os.path.exists("/dev/kvm"):
        out("note: no /dev/kvm: guests will run under TCG emulation (slow); enable VT-x/AMD-V "
            "in firmware and load kvm_intel/kvm_amd")


def _cpu_vendor_hint(proc_root):
    try:
        with open(os.path.join(proc_root, "cpuinfo"), encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return "amd" if "AMD" in line else "intel"
    except OSError:
        pass
    return "intel"
