"""Boot one emulated compute node and check the hardware the agent relies on.

Why: IOMMU groups and USB (incl. hot-plug) exist only inside the lab node, not
on the CI machine; this proves the lab gives them before higher-level tests
build on it.  Slow (image build is cached; boot ~1 min under TCG).
Run: pytest -m lab tests/lab   (or HOSTPLANE_LAB=1 pytest tests/lab)
"""
import time

import pytest

import nodes
from lab_checks import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1800)]

QEMU_STORAGE = "46f4:0001"  # QEMU USB HARDDRIVE


@pytest.fixture(scope="module")
def lab():
    lab = nodes.Lab(count=1)
    lab.down()  # leftovers of an interrupted run
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def usb_storage_serials(lab):
    """Serials of the QEMU USB storage devices the node's kernel sees."""
    out = lab.ssh(0, f"lsusb -d {QEMU_STORAGE} -v 2>/dev/null "
                     "| awk '$1 == \"iSerial\" {print $3}'").stdout
    return set(out.split())


def test_iommu_groups(lab):
    groups = lab.ssh(0, "ls /sys/kernel/iommu_groups").stdout.split()
    assert len(groups) > 0
    lab.ssh(0, "modprobe vfio-pci && modprobe 8021q")


def test_usb_storage_listed(lab):
    assert QEMU_STORAGE in lab.ssh(0, "lsusb").stdout
    assert "HPLAB0USB0" in usb_storage_serials(lab)


def test_usb_hotplug_via_qmp(lab):
    serial, dev_id, node_name = "HPLABHOT1", "usbhot1", "usbhot1blk"
    image = lab.node(0)["dir"] + "/usb1.img"
    lab.qmp(0, "blockdev-add", driver="raw", node_name=node_name,
            file={"driver": "file", "filename": image})
    lab.qmp(0, "device_add", driver="usb-storage", bus="xhci.0",
            drive=node_name, id=dev_id, serial=serial)
    t0 = time.monotonic()
    assert wait_for(lambda: serial in usb_storage_serials(lab)), \
        "hot-plugged usb-storage not listed by lsusb"
    print(f"hot-plug seen in lsusb after {time.monotonic() - t0:.1f}s")

    q = lab.qmp_session(0)
    try:
        q.execute("device_del", {"id": dev_id})
        q.wait_event("DEVICE_DELETED", timeout=30, device=dev_id)
    finally:
        q.close()
    lab.qmp(0, "blockdev-del", node_name=node_name)
    assert wait_for(lambda: serial not in usb_storage_serials(lab)), \
        "unplugged usb-storage still listed by lsusb"
    assert "HPLAB0USB0" in usb_storage_serials(lab)
