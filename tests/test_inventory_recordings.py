"""The inventory as operators read it, from umockdev recordings replayed to pyudev.

Each recording is replayed with `umockdev-run`, and the real `hostplane-agent
inventory` runs inside it: PCI from the (replayed) /sys, USB through pyudev.
"""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from tests.data.regenerate import RECORDINGS
from tests.hosts import gpu_server, small_gpu_host
from tests.synthetic import write_sysfs_tree, write_umockdev

DATA = os.path.join(os.path.dirname(__file__), "data")
pytestmark = pytest.mark.skipif(shutil.which("umockdev-run") is None,
                                reason="umockdev is installed by scripts/setup-host")


def replay_inventory(recording):
    env = dict(os.environ, HOSTPLANE_HOST_ID="replayed")
    result = subprocess.run(
        ["umockdev-run", "--device", recording, "--", sys.executable, "-m", "agent.cli",
         "inventory", "--compact"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def by_id(devices):
    return {device["id"]: device for device in devices}


def test_this_machine_virtio_devices_are_listed_but_not_assignable():
    inventory = replay_inventory(os.path.join(DATA, "this-machine.umockdev"))
    pci = by_id(inventory["pci"])
    virtio = [d for d in pci.values() if d["vendor_id"] == "1af4"]
    assert virtio, "the recording of this machine holds its virtio devices"
    for device in virtio:
        assert device["driver"] == "virtio-pci"
        assert device["assignable"] is False
        assert device["iommu_group"] is None
    assert pci["0000:00:00.0"]["type"] == "bridge"
    assert inventory["usb"] == []


def test_q35_node_endpoints_each_sit_alone_in_a_group_and_can_be_passed_through():
    inventory = replay_inventory(os.path.join(DATA, "q35-node.umockdev"))
    pci = by_id(inventory["pci"])
    assert pci["0000:02:00.0"]["type"] == "gpu"          # bochs-display stands in for a GPU
    assert pci["0000:01:00.0"]["type"] == "nic"
    assert pci["0000:03:00.0"]["type"] == "nvme"
    for address in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        assert pci[address]["assignable"], pci[address]["not_assignable_reason"]
        assert pci[address]["iommu_group_devices"] == [address]
    assert pci["0000:00:1f.2"]["not_assignable_reason"] == "bound to host-critical driver ahci"
    usb = by_id(inventory["usb"])
    storage = usb["46f4:0001:1-0000_00_04.0-3"]
    assert (storage["product"], storage["usb_version"], storage["speed_mbps"]) == \
        ("QEMU USB HARDDRIVE", "2.00", 480)


def test_small_host_gpu_and_its_audio_function_form_one_assignable_group():
    inventory = replay_inventory(os.path.join(DATA, "small-gpu-host.umockdev"))
    pci = by_id(inventory["pci"])
    gpu, audio = pci["0000:3b:00.0"], pci["0000:3b:00.1"]
    assert (gpu["type"], audio["type"]) == ("gpu", "gpu-audio")
    assert gpu["iommu_group"] == audio["iommu_group"] == 11
    assert gpu["iommu_group_devices"] == ["0000:3b:00.0", "0000:3b:00.1"]
    assert gpu["vendor_name"] == "NVIDIA Corporation" and "T4" in gpu["device_name"]
    assert gpu["numa_node"] == 0 and pci["0000:af:00.0"]["numa_node"] == 1
    usb = by_id(inventory["usb"])
    assert usb["0781:5567:4C530001"]["manufacturer"] == "SanDisk"
    assert usb["046d:c31c@1-1.2"]["serial"] is None


def test_gpu_server_counts_match_the_hardware():
    inventory = replay_inventory(os.path.join(DATA, "gpu-server.umockdev"))
    types = Counter(d["type"] for d in inventory["pci"])
    assert types["gpu"] == 8 and types["gpu-audio"] == 8
    assert types["nvme"] == 16
    pfs = [d for d in inventory["pci"] if d["sriov"]]
    assert len(pfs) == 8 and all(pf["sriov"]["num_vfs"] == 64 for pf in pfs)
    assert all(not pf["assignable"] for pf in pfs)
    vfs = [d for d in inventory["pci"] if d["physfn"]]
    assert len(vfs) == 512 and all(vf["assignable"] for vf in vfs)
    assert Counter(d["numa_node"] for d in inventory["pci"] if d["type"] == "gpu") == {0: 4, 1: 4}
    sticks = [d for d in inventory["usb"] if d["assignable"]]
    hubs = [d for d in inventory["usb"] if d["is_hub"]]
    assert len(sticks) == 16 and len(hubs) == 6
    assert len(inventory["pci"]) + len(inventory["usb"]) > 900


def test_replayed_udev_and_plain_tree_readers_agree(tmp_path):
    """The same host read through umockdev+pyudev and as a plain tree gives one answer."""
    host = small_gpu_host()
    replayed = replay_inventory(write_umockdev(host, str(tmp_path / "host.umockdev")))
    tree = write_sysfs_tree(host, tmp_path / "sys")
    result = subprocess.run([sys.executable, "-m", "agent.cli", "inventory", "--compact",
                             "--sysfs-root", tree], capture_output=True, text=True,
                            env=dict(os.environ, HOSTPLANE_HOST_ID="replayed"), check=True)
    assert json.loads(result.stdout) == replayed


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_committed_recordings_match_the_generator(tmp_path, name):
    fresh = write_umockdev(RECORDINGS[name](), str(tmp_path / name))
    with open(fresh, encoding="utf-8") as a, open(os.path.join(DATA, name), encoding="utf-8") as b:
        assert a.read() == b.read(), f"run: python -m tests.data.regenerate ({name} drifted)"


def test_gpu_server_tree_reads_with_inventory_cli(tmp_path):
    tree = write_sysfs_tree(gpu_server(), tmp_path / "sys")
    result = subprocess.run(["hostplane-agent" if shutil.which("hostplane-agent") else
                             os.path.join(os.path.dirname(sys.executable), "hostplane-agent"),
                             "inventory", "--sysfs-root", tree, "--compact"],
                            capture_output=True, text=True, check=True,
                            env=dict(os.environ, HOSTPLANE_HOST_ID="server"))
    inventory = json.loads(result.stdout)
    assert inventory["host_id"] == "server" and len(inventory["pci"]) == 922


@pytest.mark.parametrize("node", [0, 1])
def test_recorded_lab_node_shows_real_iommu_groups_and_qemu_usb_devices(node):
    """Recorded with umockdev-record inside each booted q35 + intel-iommu node (tests/lab)."""
    inventory = replay_inventory(os.path.join(DATA, f"lab-node{node}.umockdev"))
    pci = by_id(inventory["pci"])
    endpoints = {a: d for a, d in pci.items() if a.endswith(":00.0") and not a.startswith("0000:00")}
    assert {d["type"] for d in endpoints.values()} >= {"nic", "gpu", "nvme", "usb-controller"}
    for device in endpoints.values():
        assert device["assignable"], device
        assert device["iommu_group_devices"] == [device["id"]]
    ich9 = [d for d in pci.values() if d["iommu_group"] == pci["0000:00:1f.3"]["iommu_group"]]
    assert len(ich9) == 3 and not any(d["assignable"] for d in ich9)
    usb = {d["product"]: d for d in inventory["usb"]}
    storage = usb["QEMU USB HARDDRIVE"]
    assert storage["id"] == f"46f4:0001:HPLAB{node}USB0" and storage["assignable"]
    assert usb["QEMU USB Tablet"]["usb_version"] == "2.00"
    assert all(not d["assignable"] for d in inventory["usb"] if d["vendor_id"] == "1d6b")
