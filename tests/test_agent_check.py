"""`hostplane-agent check`: a readiness table, exit 1 with what to change."""

import os
import subprocess
import sys

from tests.hosts import q35_node
from tests.synthetic import write_proc, write_sysfs_tree


def run_check(env):
    return subprocess.run([sys.executable, "-m", "agent.cli", "check"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, HOSTPLANE_HOST_ID="c", **env))


def test_host_without_iommu_fails_and_says_what_to_change(tmp_path):
    proc = write_proc(str(tmp_path / "proc"), cmdline="root=/dev/vda ro")
    tree = tmp_path / "sys"
    (tree / "kernel" / "iommu_groups").mkdir(parents=True)
    result = run_check({"HOSTPLANE_HOST_SYSFS_ROOT": str(tree), "HOSTPLANE_HOST_PROC_ROOT": proc,
                        "HOSTPLANE_LIBVIRT_URI": "test:///default"})
    assert result.returncode == 1
    assert "IOMMU enabled in kernel  NO" in result.stdout
    assert "intel_iommu=on iommu=pt" in result.stdout and "VT-d" in result.stdout


def test_ready_host_passes(tmp_path):
    host = q35_node()
    tree = write_sysfs_tree(host, tmp_path / "sys")
    os.makedirs(os.path.join(tree, "module", "vfio_pci"))
    proc = write_proc(str(tmp_path / "proc"), host)
    result = run_check({"HOSTPLANE_HOST_SYSFS_ROOT": tree, "HOSTPLANE_HOST_PROC_ROOT": proc,
                        "HOSTPLANE_LIBVIRT_URI": "test:///default"})
    assert result.returncode == 0, result.stdout
    groups = {function.iommu_group for function in host.pci}
    assert f"{len(groups)} groups" in result.stdout and "Ready" in result.stdout


def test_unreachable_libvirt_is_reported(tmp_path):
    host = q35_node()
    tree = write_sysfs_tree(host, tmp_path / "sys")
    os.makedirs(os.path.join(tree, "module", "vfio_pci"))
    proc = write_proc(str(tmp_path / "proc"), host)
    result = run_check({"HOSTPLANE_HOST_SYSFS_ROOT": tree, "HOSTPLANE_HOST_PROC_ROOT": proc,
                        "HOSTPLANE_LIBVIRT_URI": "qemu+unix:///system?socket=/nonexistent"})
    assert result.returncode == 1
    assert "libvirt reachable        NO" in result.stdout and "start libvirtd" in result.stdout
