"""USB devices through udev, and the hot-plug monitor for PCI and USB.

On the live host (`sysfs_root` = /sys, also under umockdev) USB devices come from
pyudev; with a captured tree they come from the same attribute files read directly.
The monitor thread only says "this device changed"; the inventory re-reads that one
device, so a replug costs a handful of file reads, not a rescan.
"""

import logging
import threading

from agent.inventory.sysfs import USB_ATTRIBUTES

log = logging.getLogger(__name__)


class UdevUsbSource:
    def __init__(self):
        import pyudev  # imported here so a captured-tree agent needs no udev at all
        self._pyudev = pyudev
        self.context = pyudev.Context()

    def all(self):
        devices = self.context.list_devices(subsystem="usb", DEVTYPE="usb_device")
        return [(d.sys_name, attributes_of(d)) for d in devices]


class TreeUsbSource:
    """USB devices of a captured sysfs tree (no udev database needed)."""

    def __init__(self, sysfs):
        self.sysfs = sysfs

    def all(self):
        items = []
        for name in self.sysfs.usb_device_names():
            attrs = self.sysfs.read_usb_attributes(name)
            if attrs is not None:
                items.append((name, attrs))
        return items


def attributes_of(device):
    attrs = {}
    for name in USB_ATTRIBUTES:
        try:
            value = device.attributes.get(name)
        except (KeyError, OSError):
            value = None
        attrs[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return attrs


class HotplugMonitor:
    """A daemon thread feeding udev add/remove/change/bind/unbind into the inventory."""

    def __init__(self, inventory, context):
        import pyudev
        self.inventory = inventory
        self.monitor = pyudev.Monitor.from_netlink(context)
        self.monitor.filter_by("pci")
        self.monitor.filter_by("usb", "usb_device")
        self._thread = None
        self._stop = threading.Event()

    def start(self):
        self.monitor.start()
        self._thread = threading.Thread(target=self._run, name="hotplug", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _run(self):
        while not self._stop.is_set():
            try:
                device = self.monitor.poll(timeout=1.0)
            except Exception:  # noqa: BLE001 - a monitor that dies silently is worse
                log.exception("udev monitor failed; hot-plug updates stop")
                return
            if device is not None:
                self.handle(device.action, device)

    def handle(self, action, device):
        try:
            if device.subsystem == "pci":
                self.inventory.refresh_pci(device.sys_name)
            elif device.subsystem == "usb" and device.device_type == "usb_device":
                attrs = None if action == "remove" else attributes_of(device)
                self.inventory.refresh_usb(device.sys_name, attrs)
            log.info("udev %s %s %s", action, device.subsystem, device.sys_name)
        except Exception:  # noqa: BLE001 - one bad device must not stop the monitor
            log.exception("could not apply udev %s for %s", action, device.sys_name)
