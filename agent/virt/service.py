"""VMs through libvirt: create, list, start, stop, delete, and who holds which device.

Nothing about VMs is stored by the agent: every answer is read back from libvirt's
domain XML (live and persistent), so a restart or a `virsh` edit behind the agent's
back is reflected. Device attach/detach lives in `agent.virt.attach`.
"""

import logging
import os
import tempfile
import threading
import time

from prometheus_client import Histogram

from agent.testhooks import never
from agent.virt import domxml, rules
from agent.virt.claims import CancelledOperations, ChangeMark, HostLock, Journal
from agent.virt.connection import Connection, libvirt
from agent.virt.holders import conflicts as find_conflicts
from agent.virt.holders import domain_hostdevs, ours
from agent.virt.holders import scan as scan_holders
from agent.virt.storage import Storage
from hostplane.core import numa
from hostplane.errors import BadRequest, Conflict, NotFound

log = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES = {1: "running", 2: "running", 3: "paused", 4: "stopping", 5: "stopped",
          6: "crashed", 7: "suspended"}
# Everything libvirt keeps beside a persistent domain, dropped with it where offered.
UNDEFINE_FLAGS = ("VIR_DOMAIN_UNDEFINE_MANAGED_SAVE", "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
                  "VIR_DOMAIN_UNDEFINE_NVRAM", "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA")


class Virt:
    def __init__(self, config, inventory, iommu_ready, pause=never, numa_nodes=list):
        """`iommu_ready()` answers whether the host's IOMMU groups exist right now;
        `pause(step)` is the fault-injection seam (`agent.testhooks`), a no-op unless a
        test asks; `numa_nodes()` lists the host's NUMA nodes (hostplane.core.numa)."""
        section = config["libvirt"]
        self.inventory = inventory
        self.pause = pause
        self.iommu_ready = iommu_ready
        self.numa_nodes = numa_nodes
        self.detach_timeout_s = float(section["detach_timeout_s"])
        self.stop_timeout_s = float(section["stop_timeout_s"])
        self.storage = Storage(section["storage_dir"])
        self.domain_prefix = section["domain_prefix"]
        self.conflicts = {}
        self.operations = {}   # {vm: operation id} as of the last holder scan
        state_dir = config["host"]["state_dir"] or os.path.join(tempfile.gettempdir(),
                                                                "hostplane-agent")
        self.state_dir = state_dir
        self.lock = HostLock(state_dir)
        # In no registry: the app's collector yields it, and under several gunicorn
        # workers prometheus-client's multiprocess mode sums every worker's samples.
        self.latency = Histogram(
            "hostplane_agent_attach_seconds",
            "Time to attach or detach a passthrough device, across all workers",
            ["operation", "kind", "outcome"], registry=None, buckets=LATENCY_BUCKETS)
        self.journal = Journal(state_dir)
        self.cancelled = CancelledOperations(state_dir)
        self.changes = ChangeMark(state_dir)
        self.connection = Connection(section["uri"], self.refresh, self._device_removed,
                                     self.changes.moved)
        self._removals = {}
        self._removals_lock = threading.Lock()

    # --- adapter life -------------------------------------------------------------------
    def start(self):
        self.connection.start()
        if self.connection.connected:
            with self.lock.held():
                self.recover()
            self.refresh()

    def close(self):
        self.connection.close()

    def status(self):
        status = self.connection.status()
        status["interrupted"] = self.journal.reports()
        return status

    # --- who holds what -----------------------------------------------------------------
    def refresh(self):
        """Push holders (and devices found in several domains) into the inventory."""
        self.inventory.set_attachments(self.holders(), self.conflicts, self.operations)

    def mutated(self, holders=None):
        """After our own change: publish `holders` (or rescan), and tell the other workers."""
        self.changes.touch()
        holders = self.holders() if holders is None else holders
        self.inventory.set_attachments(holders, self.conflicts, self.operations)

    def holders(self):
        """{"pci:<id>" | "usb:<id>": vm} over this agent's domains, live and persistent XML.

        A device in two domains' XML (a `virsh` edit; libvirt only refuses it at start)
        is kept in `self.conflicts` {key: [vms]}: it shows in the inventory and in
        `check`, and every attach of it is refused until an operator picks one.
        """
        conn = self.connection.get()
        operations = {}
        with self.connection.errors():
            found = scan_holders(conn, self.domain_prefix, self.usb_id, operations)
        self.conflicts, self.operations = find_conflicts(found), operations
        for key, vms in self.conflicts.items():
            log.error("%s is in the XML of several VMs: %s", key, ", ".join(vms))
        return {key: vms[0] for key, vms in found.items()}

    def hostdevs(self, dom, active=None, persistent=None):
        """The domain's passthrough devices with stable ids, marked live and/or persistent."""
        return domain_hostdevs(dom, self.usb_id, active, persistent)

    def usb_id(self, entry):
        """Map libvirt's vendor/product/bus/device to the inventory's stable id."""
        same_model = [d for d in self.inventory.usb_devices()
                      if (d["vendor_id"], d["product_id"]) == (entry["vendor_id"],
                                                               entry["product_id"])]
        for device in same_model:
            if (device["busnum"], device["devnum"]) == (entry["busnum"], entry["devnum"]):
                return device["id"]
        if len(same_model) == 1:
            return same_model[0]["id"]
        return f"{entry['vendor_id']}:{entry['product_id']}@bus{entry['busnum']}"

    def recover(self):
        """Call with the lock held: report an attach a dead worker left in the journal."""
        pending = self.journal.pending()
        if pending is None:
            return
        holders = self.holders()
        vm = pending["vm"]
        self.journal.report({
            "vm": vm, "pid": pending["pid"], "started": pending["started"],
            "found": time.time(),
            "attached": [k for k in pending["devices"] if holders.get(k) == vm],
            "not_attached": [k for k in pending["devices"] if holders.get(k) != vm],
            "message": f"an attach to {vm} was interrupted (worker {pending['pid']} died); "
                       "the lists show what libvirt holds now"})
        self.journal.done()

    # --- VMs ----------------------------------------------------------------------------
    def domain(self, name):
        conn = self.connection.get()
        if not name.startswith(self.domain_prefix):
            raise NotFound(f"no VM {name}", code="vm_not_found")
        with self.connection.errors(name):
            return conn.lookupByName(name)

    def vm_view(self, dom):
        with self.connection.errors(dom.name()):
            facts = domxml.read_domain(dom.XMLDesc(0))
            state = STATES.get(dom.state()[0], "unknown")
            devices = [{"type": e["type"], "id": e["id"], "live": e["live"],
                        "persistent": e["persistent"]} for e in self.hostdevs(dom)]
            persistent = bool(dom.isPersistent())
        facts.pop("hostdevs")
        return {"name": facts.pop("name"), "state": state, "persistent": persistent,
                **facts, "devices": devices}

    def list_vms(self):
        conn = self.connection.get()
        views = []
        with self.connection.errors():
            domains = ours(conn.listAllDomains(), self.domain_prefix)
        for dom in sorted(domains, key=lambda d: d.name()):
            try:
                views.append(self.vm_view(dom))
            except NotFound:
                continue     # undefined while we listed
        return views

    def create(self, spec):
        """Define (and optionally start) a VM with its devices checked under the host lock.

        Returns (view, created). With the controller's `op_id` the create is idempotent:
        a retry of the same operation answers the VM it made (created False), and an
        operation the controller cancelled is refused."""
        conn = self.connection.get()
        if not spec["name"].startswith(self.domain_prefix):
            raise BadRequest(f"VM names on this agent start with {self.domain_prefix!r}",
                             code="invalid_name", details={"prefix": self.domain_prefix})
        op_id = spec.get("op_id")
        with self.lock.held():
            self.recover()
            self._refuse_cancelled(op_id)
            with self.connection.errors():
                taken = {d.name(): d for d in conn.listAllDomains()}
            if spec["name"] in taken:
                existing = taken[spec["name"]]
                if op_id and self._op_of(existing) == op_id:
                    return self.vm_view(existing), False
                raise Conflict(f"a VM named {spec['name']} already exists", code="vm_exists")
            numa = self.numa_pin(spec.get("numa_node"), spec["memory_mib"])
            devices = self.check_new_devices(spec["name"], spec["devices"])
            hostdevs = [domxml.hostdev_xml(item["type"], device)
                        for item, device in zip(spec["devices"], devices)]
            disks, made = self.storage.disks_for(spec["name"], spec.get("disks") or [])
            text = domxml.domain_xml({**spec, "disks": disks},
                                     self.domain_type(conn, spec.get("accel")), hostdevs,
                                     numa)
            try:
                with self.connection.errors(spec["name"]):
                    dom = conn.defineXML(text)
                    if spec["start"]:
                        try:
                            dom.create()
                        except libvirt.libvirtError:
                            dom.undefine()
                            raise
            except Exception:
                self.storage.remove(made)
                raise
            self.mutated()
        return self.vm_view(dom), True

    def claim_domain(self, name, op_id, expected):
        """Record the controller's operation `op_id` in the domain, if it still carries
        `expected` (None: no operation); the controller adopts or deletes a domain it did
        not make only through this, so two such requests never both win."""
        with self.lock.held():
            self._refuse_cancelled(op_id)
            dom = self.domain(name)
            with self.connection.errors(name):
                found = self._op_of(dom)
                if found != expected:
                    raise Conflict(f"{name} changed meanwhile (another operation took it)",
                                   code="vm_changed",
                                   details={"op_id": expected, "found_op_id": found})
                flags = ((libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
                         | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0))
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                domxml.operation_metadata(op_id), "hostplane",
                                domxml.METADATA_NS, flags)
            self.mutated()
        return self.vm_view(dom)

    def _op_of(self, dom):
        with self.connection.errors(dom.name()):
            return domxml.operation_of(domxml.parse(dom.XMLDesc(0)))

    def _refuse_cancelled(self, op_id):
        """Call with the lock held: 409 for an operation the controller gave up on."""
        if op_id and op_id in self.cancelled:
            raise Conflict(f"the controller cancelled operation {op_id} (it gave up waiting "
                           "for it)", code="operation_cancelled", details={"op_id": op_id})

    def numa_pin(self, node_id, memory_mib):
        """The host NUMA node a new VM is pinned to (None: not pinned); 409 when the host
        has no such node or it cannot hold the VM."""
        if node_id is None:
            return None
        nodes = self.numa_nodes()
        refusal = numa.pin_refusal(nodes, node_id, memory_mib)
        if refusal is not None:
            raise Conflict(refusal[1], code=refusal[0],
                           details={"numa_node": node_id, "numa_nodes": nodes})
        return numa.node_by_id(nodes, node_id)

    def check_new_devices(self, vm, wanted):
        """Inventory models for a new VM's devices, each checked like an attach."""
        holders, usb_versions, models = self.holders(), [], []
        for item in wanted:
            device = self.device(item["type"], item["id"])
            rules.check_no_conflict(item["type"], device["id"], self.conflicts)
            if item["type"] == "pci":
                rules.check_pci(device, vm, holders, self.iommu_ready())
            else:
                rules.check_usb(device, vm, holders, usb_versions)
                usb_versions.append(device.get("usb_version"))
            holders[f"{item['type']}:{device['id']}"] = vm
            models.append(device)
        return models

    def device(self, kind, device_id):
        device = (self.inventory.pci if kind == "pci" else self.inventory.usb)(device_id)
        if device is None:
            raise NotFound(f"no {kind.upper()} device {device_id} on this host",
                           code="device_not_found", details={"device": device_id})
        return device

    def domain_type(self, conn, accel=None):
        """"test" on libvirt's test driver; "kvm" when asked or offered, else "qemu" (TCG)."""
        if conn.getType() == "Test":
            return "test"
        if accel in ("tcg", "kvm"):
            return "qemu" if accel == "tcg" else "kvm"
        caps = domxml.parse(conn.getCapabilities())
        offered = caps.find("guest/arch[@name='x86_64']/domain[@type='kvm']")
        return "kvm" if offered is not None else "qemu"

    def start_vm(self, name):
        dom = self.domain(name)
        with self.connection.errors(name):
            if not dom.isActive():
                dom.create()
        return self.vm_view(dom)

    def stop_vm(self, name, force, timeout_s=None):
        """Graceful ACPI shutdown waited for `timeout_s`, or destroy when forced."""
        dom = self.domain(name)
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        with self.connection.errors(name):
            if dom.isActive():
                if force:
                    dom.destroy()
                else:
                    dom.shutdown()
                    deadline = time.monotonic() + timeout_s
                    while dom.isActive() and time.monotonic() < deadline:
                        time.sleep(0.2)
                    if dom.isActive():
                        raise Conflict(f"{name} did not shut down within {timeout_s:g} s (the "
                                       "guest ignored ACPI); stop it with force", code="stop_timeout",
                                       details={"timeout_s": timeout_s})
        return self.vm_view(dom)

    def delete_vm(self, name, delete_storage=False, op_id=None):
        """Destroy if running, undefine with its metadata; disk files go only when asked,
        and only from the storage directory. Returns (removed, kept) disk paths.

        With `op_id` (the controller's create operation of this VM): that create is
        cancelled first, so a late request of it can never define the VM again, and a
        domain made by another operation (the name re-used since) is left alone (409)."""
        with self.lock.held():
            if op_id:
                self.cancelled.add(op_id)
            dom = self.domain(name)
            with self.connection.errors(name):
                facts = domxml.read_domain(dom.XMLDesc(0))
                if op_id and facts["op_id"] != op_id:
                    raise Conflict(f"{name} on this host was made by another operation; "
                                   "it is not the VM the controller means", code="vm_changed",
                                   details={"op_id": op_id, "found_op_id": facts["op_id"]})
                freed = [e["id"] for e in self.hostdevs(dom) if e["type"] == "pci"]
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    undefine(dom)
            for address in freed:      # managed: libvirt rebinds them to their host driver
                self.inventory.refresh_pci(address)
            self.mutated()
        paths = [disk["path"] for disk in facts["disks"] if disk["path"]]
        if not delete_storage:
            return [], paths
        removed, kept = self.storage.remove(paths)
        if kept:
            log.warning("kept disks of %s outside %s: %s", name, self.storage.root, kept)
        return removed, kept

    # --- events -------------------------------------------------------------------------
    def removal_waiter(self, vm, alias):
        event = threading.Event()
        with self._removals_lock:
            self._removals[(vm, alias)] = event
        return event

    def forget_waiter(self, vm, alias):
        with self._removals_lock:
            self._removals.pop((vm, alias), None)

    def _device_removed(self, vm, alias):
        with self._removals_lock:
            event = self._removals.get((vm, alias))
        if event is not None:
            event.set()


def undefine(dom):
    """undefineFlags with every flag this libvirt offers; plain undefine where it has none."""
    flags = 0
    for name in UNDEFINE_FLAGS:
        flags |= getattr(libvirt, name, 0)
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
            raise
        log.info("undefine flags %#x not supported (%s); plain undefine", flags, exc)
        dom.undefine()
