"""The agent's adapters wired together: one `Agent` per process, built from config.

Blueprints reach it through `current_agent()`. Each adapter is pointed by config
(sysfs root, libvirt URI, network namespace), which is how tests use real parts.

`hostplane-agent inventory` builds one too and is a command an operator waits for, so
what only serving needs (libvirt, netlink, host facts, logging, uuid) is imported where
it is used, not here.
"""

import os

from agent import testhooks
from agent.config import host_id as configured_host_id
from agent.inventory.generation import SharedGeneration
from agent.inventory.pciids import shared_pciids
from agent.inventory.store import Inventory
from agent.inventory.sysfs import SysfsTree
from agent.inventory.udev import TreeUsbSource, UdevUsbSource
from hostplane import __version__


class Agent:
    def __init__(self, config, one_shot=False):
        """`one_shot`: a command's inventory (generation counted in-process, never in the
        serving agent's file); both keep looked-up names under `[host] state_dir`."""
        self.config = config
        self.version = __version__
        self.host_id = configured_host_id(config)
        self.boot_id = start_id()
        host = config["host"]
        self.sysfs = SysfsTree(host["sysfs_root"])
        self.live_host = os.path.realpath(host["sysfs_root"]) == "/sys"
        usb_source = UdevUsbSource() if self.live_host else TreeUsbSource(self.sysfs)
        self.names = shared_pciids(host["pci_ids"] or None, host["state_dir"] or None)
        shared = host["state_dir"] and not one_shot
        self.inventory = Inventory(
            self.sysfs, usb_source,
            SharedGeneration(os.path.join(host["state_dir"], "inventory.generation")
                             if shared else None),
            host["critical_drivers"], names=self.names.names if self.names.available else None,
            host_uses=self._host_uses_reader())
        self.monitor = None
        self.virt = None        # libvirt adapter (agent.virt), set by start()
        self.networks = None    # netlink adapter (agent.net), set by start()

    def _host_uses_reader(self):
        """Mounts, swap and routes are this machine's only when /sys is too: a captured tree
        or a umockdev replay (UMOCKDEV_DIR) says "unknown" rather than borrow ours."""
        if not self.live_host or os.environ.get("UMOCKDEV_DIR"):
            return None
        host = self.config["host"]
        port = _port_of(self.config["server"]["bind"])

        def host_uses():
            from agent.inventory.hostuse import read_host_uses
            return read_host_uses(host["sysfs_root"], host["proc_root"], port)
        return host_uses

    def scan(self):
        """Read every device afresh; the names looked up are kept for the next process."""
        self.inventory.scan()
        self.names.save()

    def start(self):
        self.scan()
        if self.config["host"]["controller_url"]:
            from agent.notify import ControllerNotifier
            self.inventory.add_listener(ControllerNotifier(
                self.config["host"]["controller_url"], self.host_id, self.boot_id,
                self.config["server"]["token"], ca=self.config["host"]["controller_ca"]))
        if self.live_host and self.config["host"]["watch_udev"]:
            self._start_monitor()
        pauses = testhooks.from_environment(self.config["host"]["state_dir"])
        self._start_virt(pauses.virt)
        self._start_networks(pauses.net)

    def _start_virt(self, pause):
        from agent.hostinfo import host_iommu
        from agent.virt import Virt
        self.virt = Virt(self.config, self.inventory, lambda: host_iommu(
            self.sysfs, self.config["host"]["proc_root"])["ready"], pause,
            self.sysfs.numa_nodes)
        self.virt.start()

    def _start_networks(self, pause):
        from agent.net import HostNetworks
        state_dir = self.config["host"]["state_dir"]
        self.networks = HostNetworks(self.config["network"]["netns"],
                                     os.path.join(state_dir, "networks.json") if state_dir else None,
                                     pause)
        self.networks.reconcile()

    def _start_monitor(self):
        from agent.inventory.udev import HotplugMonitor
        try:
            self.monitor = HotplugMonitor(self.inventory, self.inventory.usb_source.context)
            self.monitor.start()
        except Exception as exc:  # noqa: BLE001 - no netlink (containers): poll still works
            import logging
            logging.getLogger(__name__).warning(
                "udev monitor unavailable (%s); hot-plug is seen on rescan only", exc)
            self.monitor = None

    def host(self):
        from agent.hostinfo import host_facts
        facts = host_facts(self.sysfs, self.config["host"]["proc_root"])
        facts["host_id"] = self.host_id
        facts["boot_id"] = self.boot_id
        facts["agent_version"] = self.version
        facts["libvirt"] = self.libvirt_status()
        return facts

    def libvirt_status(self):
        if self.virt is None:
            return {"ok": False, "uri": self.config["libvirt"]["uri"], "version": None,
                    "qemu_version": None, "error": "libvirt adapter not started"}
        return self.virt.status()

    def close(self):
        if self.monitor is not None:
            self.monitor.stop()
        for adapter in (self.virt, self.networks):
            if adapter is not None and hasattr(adapter, "close"):
                adapter.close()


def _port_of(bind):
    try:
        return int(str(bind).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def start_id(environ=None, proc_root="/proc"):
    """One id per agent start, the same in every gunicorn worker.

    The controller resyncs a host whenever its boot id changes, so workers that each drew
    their own made every other health check look like a restart. Under gunicorn the id is
    derived from the master (the kernel's boot, its pid and start time): workers agree
    without talking, a respawned worker keeps it, a restarted agent gets a new one.
    Outside gunicorn (one process), or built in the master before the workers fork
    (`--preload`, where they inherit it), it is random.
    """
    environ = os.environ if environ is None else environ
    if not environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        return os.urandom(16).hex()
    master = os.getppid()
    try:
        with open(f"{proc_root}/{master}/cmdline", "rb") as cmdline:
            if b"gunicorn" not in cmdline.read():
                return os.urandom(16).hex()   # this process is the master itself
        with open(f"{proc_root}/{master}/stat", encoding="ascii") as stat:
            started = stat.read().rsplit(")", 1)[1].split()[19]   # field 22, starttime
        with open(f"{proc_root}/sys/kernel/random/boot_id", encoding="ascii") as boot:
            kernel_boot = boot.read().strip()
    except (OSError, IndexError):
        return os.urandom(16).hex()
    import hashlib
    return hashlib.sha256(f"{kernel_boot}/{master}/{started}".encode()).hexdigest()[:32]


def current_agent():
    from flask import current_app   # only a serving process has an app (see agent.cli)
    return current_app.extensions["hostplane_agent"]
