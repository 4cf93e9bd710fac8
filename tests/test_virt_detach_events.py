"""Live detach waits for libvirt's device-removed event, bounded, and says so on timeout.

Live hostdev detach needs a running VM holding a host device, which needs IOMMU/USB
(the lab, issue 7). The wait itself is device-agnostic, so here emulated devices of a
real running guest stand in: a USB tablet, which QEMU unplugs at once (the event
arrives), and a PCIe NIC, which a guest with no OS never releases (the wait times out).
"""

import time

import pytest

from agent.virt.attach import detach_live
from hostplane.errors import Conflict
from tests.test_virt_support import agent_client, lv, prefix  # noqa: F401

TABLET = "<input type='tablet' bus='usb'><alias name='ua-tablet'/></input>"
NIC = "<interface type='user'><model type='virtio'/><alias name='ua-nic'/></interface>"


@pytest.fixture
def running(tmp_path, lv, prefix):  # noqa: F811
    """A running diskless guest (transient, TCG) and an agent with a 1 s detach bound."""
    name = f"{prefix}-live"
    lv.createXML(f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
                 "<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os>"
                 f"<devices><controller type='usb' model='qemu-xhci'/>{TABLET}{NIC}</devices>"
                 "</domain>")
    with agent_client(tmp_path, detach_timeout_s=1.0) as (_, agent):
        yield agent.virt, name


def test_detach_returns_when_the_device_removed_event_arrives(running):
    virt, name = running
    virt.detach_timeout_s = 30.0      # only the event can end the wait this early
    started = time.monotonic()
    detach_live(virt, virt.domain(name), name, "ua-tablet", TABLET, "tablet")
    assert time.monotonic() - started < 5
    assert "ua-tablet" not in virt.domain(name).XMLDesc(0)


def test_detach_that_the_guest_never_acknowledges_times_out_clearly(running):
    virt, name = running
    with pytest.raises(Conflict) as refused:
        detach_live(virt, virt.domain(name), name, "ua-nic", NIC, "virtio NIC")
    assert refused.value.code == "detach_timeout"
    assert "did not release virtio NIC within 1 s" in refused.value.message
    assert "ua-nic" in virt.domain(name).XMLDesc(0)
