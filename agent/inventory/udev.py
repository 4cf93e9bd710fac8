"""USB devices through udev, and the hot-plug monitor for PCI and USB.

On the live host (`sysfs_root` = /sys, also under umockdev) USB devices come from
pyudev; with a captured tree they come from the same attribute files read directly.
The monitor thread only says "this device changed"; the inventory re-reads that one
device, so a replug costs a handful of file reads, not a rescan.
"""

import select
import threading

from agent.inventory.sysfs import USB_ATTRIBUTES


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
    """A daemon thread feeding add/remove/change/bind/unbind into the inventory.

    Two netlink sources: the kernel's uevent is the first word (sysfs is complete by
    then; udevd's rules can take a quarter second on a slow host), udevd's copy after
    its rules is the one a container or a umockdev testbed delivers. A device read
    twice is no change the second time, so nothing is announced twice.
    """

    def __init__(self, inventory, context):
        import logging  # serving only: `hostplane-agent inventory` never loads it

        import pyudev
        self.log = logging.getLogger(__name__)
        self.inventory = inventory
        self.monitors = []
        for source in ("kernel", "udev"):
            try:
                monitor = pyudev.Monitor.from_netlink(context, source=source)
            except Exception as exc:  # noqa: BLE001 - one source is enough
                self.log.info("no %s uevents (%s)", source, exc)
                continue
            monitor.filter_by("pci")
            monitor.filter_by("usb", "usb_device")
            self.monitors.append(monitor)
        if not self.monitors:
            raise OSError("no uevent source")
        self._thread = None
        self._stop = threading.Event()

    def start(self):
        for monitor in self.monitors:
            monitor.start()
        self._thread = threading.Thread(target=self._run, name="hotplug", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _run(self):
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select(self.monitors, [], [], 1.0)
                devices = [monitor.poll(timeout=0) for monitor in ready]
            except Exception:  # noqa: BLE001 - a monitor that dies silently is worse
                self.log.exception("udev monitor failed; hot-plug updates stop")
                return
            for device in devices:
                if device is not None:
                    self.handle(device.action, device)

    def handle(self, action, device):
        try:
            if device.subsystem == "pci":
                self.inventory.refresh_pci(device.sys_name)
            elif device.subsystem == "usb" and device.device_type == "usb_device":
                attrs = None if action == "remove" else attributes_of(device)
                self.inventory.refresh_usb(device.sys_name, attrs)
            self.log.info("udev %s %s %s", action, device.subsystem, device.sys_name)
        except Exception:  # noqa: BLE001 - one bad device must not stop the monitor
            self.log.exception("could not apply udev %s for %s", action, device.sys_name)
