"""Hot-plug seen by a real agent (gunicorn) through udev, inside a umockdev testbed.

The testbed adds a device and sends the kernel's uevent, as a real plug would; the
agent's pyudev monitor re-reads that device, bumps the generation, and tells the
controller when `controller_url` is set.
"""

import functools
import http.server
import json
import os
import shutil
import threading

import pytest

from tests import support
from tests.conftest import TOKEN
from tests.umockdev_bed import HotplugBed

DATA = os.path.join(os.path.dirname(__file__), "data")
pytestmark = pytest.mark.skipif(shutil.which("umockdev-run") is None,
                                reason="umockdev is installed by scripts/setup-host")
STICK_PATH = "/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1.3"
STICK = "\n".join([
    f"P: {STICK_PATH}", "E: DEVTYPE=usb_device", "E: SUBSYSTEM=usb",
    r"A: idVendor=0951\n", r"A: idProduct=1666\n", r"A: serial=HOTPLUG01\n",
    r"A: version= 3.20\n", r"A: speed=5000\n", r"A: busnum=1\n", r"A: devnum=5\n",
    r"A: bDeviceClass=00\n", r"A: manufacturer=Kingston\n", r"A: product=DataTraveler 3.0\n", ""])
GPU_PATH = "/devices/pci0000:00/0000:00:03.0"
GPU = "\n".join([
    f"P: {GPU_PATH}", "E: SUBSYSTEM=pci", "E: DRIVER=vfio-pci", "E: PCI_CLASS=30000",
    "E: PCI_ID=10DE:2236", "E: PCI_SUBSYS_ID=10DE:1482", "E: PCI_SLOT_NAME=0000:00:03.0",
    r"A: class=0x030000\n", r"A: vendor=0x10de\n", r"A: device=0x2236\n", r"A: numa_node=0\n",
    "L: iommu_group=../../../kernel/iommu_groups/40", ""])


wait_for = functools.partial(support.wait_for, timeout=30.0, interval=0.02)


@pytest.fixture
def events():
    """A stand-in controller endpoint on loopback that records what agents push."""
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


@pytest.fixture
def bed(tmp_path, events):
    url, _ = events
    env = {"HOSTPLANE_SERVER_TOKEN": TOKEN, "HOSTPLANE_HOST_ID": "hotplug-host",
           "HOSTPLANE_HOST_STATE_DIR": str(tmp_path / "state"),
           "HOSTPLANE_LIBVIRT_URI": "test:///default", "HOSTPLANE_HOST_CONTROLLER_URL": url}
    testbed = HotplugBed(os.path.join(DATA, "small-gpu-host.umockdev"), env, TOKEN)
    yield testbed
    testbed.close()


def usb_ids(bed):
    return {device["id"] for device in bed.get("/v1/devices").json()["usb"]}


def test_plugged_usb_stick_appears_and_unplugged_one_disappears(bed):
    before = bed.get("/v1/devices")
    generation = before.json()["generation"]
    bed.plug(STICK, STICK_PATH)
    assert wait_for(lambda: "0951:1666:HOTPLUG01" in usb_ids(bed))
    stick = bed.get("/v1/devices/usb/0951:1666:HOTPLUG01").json()
    assert (stick["usb_version"], stick["speed_mbps"], stick["port"]) == ("3.20", 5000, "1-1.3")
    after = bed.get("/v1/devices", headers={**bed.headers, "If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200 and after.json()["generation"] > generation

    bed.unplug(STICK_PATH)
    assert wait_for(lambda: "0951:1666:HOTPLUG01" not in usb_ids(bed))
    assert bed.get("/v1/devices/usb/0951:1666:HOTPLUG01").status_code == 404


def test_hot_added_gpu_is_read_with_its_iommu_group(bed):
    bed.plug(GPU, GPU_PATH)
    gpu = wait_for(lambda: bed.get("/v1/devices/pci/0000:00:03.0").status_code == 200
                   and bed.get("/v1/devices/pci/0000:00:03.0").json())
    assert gpu["type"] == "gpu" and gpu["iommu_group"] == 40 and gpu["driver"] == "vfio-pci"
    assert gpu["assignable"] is True
    bed.unplug(GPU_PATH)
    assert wait_for(lambda: bed.get("/v1/devices/pci/0000:00:03.0").status_code == 404)


def test_agent_tells_the_controller_when_devices_change(bed, events):
    _, received = events
    bed.plug(STICK, STICK_PATH)
    assert wait_for(lambda: any(body["reason"].startswith("usb") for _, _, body in received))
    path, authorization, body = [e for e in received if e[2]["reason"].startswith("usb")][-1]
    assert path == "/v1/hosts/hotplug-host/events"
    assert authorization == f"Bearer {TOKEN}"
    assert body["host_id"] == "hotplug-host" and len(body["boot_id"]) == 32
    assert body["generation"] == bed.get("/v1/devices").json()["generation"]
