"""Attach and detach PCI/USB hostdevs: claim-check-attach under the host lock.

Attach: take the host lock (all workers), read holders afresh from every domain's XML,
check the refusals (`agent.virt.rules`), write the journal, attach with libvirt
(live when the VM runs, persistent always, unless asked otherwise), clear the journal.
Detach: live first, waiting for libvirt's device-removed event (bounded) *without* the
host lock, so a guest slow to let go of one device does not stall every other attach
on the host; then the persistent config, under the lock again. A managed PCI device
returns to its host driver and the inventory re-reads it. Both are timed into the
`hostplane_agent_attach_seconds` histogram (operation, kind, outcome).
"""

import functools
import time
import xml.etree.ElementTree as ET

from agent.virt import domxml, rules
from agent.virt.connection import libvirt
from hostplane.core.usb import limit_class
from hostplane.errors import ApiError, BadRequest, Conflict, NotFound


def timed(operation):
    """Observe how long `operation` took, labelled with its kind and outcome (ok or the
    error code); a caller's bad input is timed too, since it is what the caller waited."""
    def decorate(function):
        @functools.wraps(function)
        def run(virt, vm, kind, *args, **kwargs):
            started, outcome = time.perf_counter(), "error"
            try:
                result = function(virt, vm, kind, *args, **kwargs)
                outcome = "ok"
                return result
            except ApiError as exc:
                outcome = exc.code
                raise
            finally:
                virt.latency.labels(operation, kind, outcome).observe(
                    time.perf_counter() - started)
        return run
    return decorate


@timed("attach")
def attach(virt, vm, kind, device_id, live=None, persistent=True, with_group=False):
    """Attach one device (or its whole IOMMU group's endpoints); idempotent per VM."""
    dom = virt.domain(vm)
    device = virt.device(kind, device_id)
    targets = rules.group_endpoints(device, virt.inventory.pci) \
        if kind == "pci" and with_group else [device]
    with virt.lock.held():
        virt.recover()
        holders = virt.holders()
        with virt.connection.errors(vm):
            active = bool(dom.isActive())
            current = virt.hostdevs(dom)
            usb_versions = _usb_versions(virt, current)
        live = active if live is None else live
        if live and not active:
            raise Conflict(f"{vm} is not running; attach persistently or start it first",
                           code="vm_not_running")
        if not live and not persistent:
            raise BadRequest("nothing to do: live and persistent are both false",
                             code="invalid_request")
        for target in targets:
            rules.check_no_conflict(kind, target["id"], virt.conflicts)
        todo = [t for t in targets if holders.get(f"{kind}:{t['id']}") != vm]
        for target in todo:
            if kind == "pci":
                rules.check_pci(target, vm, holders, virt.iommu_ready())
            else:
                rules.check_usb(target, vm, holders, usb_versions)
        if todo:
            _attach_all(virt, dom, vm, kind, todo, _flags(live, persistent))
            virt.mutated({**holders, **{f"{kind}:{t['id']}": vm for t in todo}})
    return virt.vm_view(dom)


@timed("detach")
def detach(virt, vm, kind, device_id):
    """Remove the device from the running guest (event-confirmed) and from the config."""
    dom = virt.domain(vm)
    with virt.lock.held(), virt.connection.errors(vm):
        entry = _held_entry(virt, dom, vm, kind, device_id, required=True)
        element = domxml.to_text(domxml.hostdev_xml(kind, entry))
        unplug = entry["live"] and dom.isActive()
    with virt.connection.errors(vm):
        if unplug:      # takes the lock only to ask; waits without it
            detach_live(virt, dom, vm, entry["alias"], element, entry["id"])
    with virt.lock.held():
        with virt.connection.errors(vm):
            entry = _held_entry(virt, dom, vm, kind, device_id)   # a concurrent detach?
            if entry is not None and entry["persistent"] and dom.isPersistent():
                _detach_device(dom, element, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        if kind == "pci":
            virt.inventory.refresh_pci(device_id)     # managed: back on its host driver
        virt.mutated()
    return virt.vm_view(dom)


def _held_entry(virt, dom, vm, kind, device_id, required=False):
    entry = next((e for e in virt.hostdevs(dom) if e["key"] == f"{kind}:{device_id}"), None)
    if entry is None and required:
        raise NotFound(f"{device_id} is not attached to {vm}", code="device_not_attached",
                       details={"device": device_id, "vm": vm})
    return entry


# --- helpers ---------------------------------------------------------------------------
def _attach_all(virt, dom, vm, kind, targets, flags):
    """Journal, attach each target; a libvirt refusal undoes the ones already attached."""
    virt.journal.begin(vm, [f"{kind}:{t['id']}" for t in targets])
    virt.pause("claimed")
    done = []
    try:
        with virt.connection.errors(vm):
            for target in targets:
                element = _hostdev_for(dom, kind, target, flags)
                _attach_device(dom, element, flags)
                done.append(element)
                virt.pause("attached-one")
    except Exception:
        for element in done:
            try:
                dom.detachDeviceFlags(element, flags)
            except libvirt.libvirtError:
                pass
        raise
    finally:
        virt.journal.done()
    if kind == "pci":
        for target in targets:
            virt.inventory.refresh_pci(target["id"])


def _hostdev_for(dom, kind, device, flags):
    """Hostdev XML; a USB 3 device goes on an xHCI controller, added when the VM has none."""
    if kind == "pci" or limit_class(device.get("usb_version"))[0] < 3:
        return domxml.to_text(domxml.hostdev_xml(kind, device))
    controllers = domxml.read_domain(dom.XMLDesc(0 if flags & libvirt.VIR_DOMAIN_AFFECT_LIVE
                                                 else libvirt.VIR_DOMAIN_XML_INACTIVE)
                                     )["usb_controllers"]
    xhci = next((c for c in controllers if c["model"] in domxml.XHCI_MODELS), None)
    if xhci is None:
        if flags & libvirt.VIR_DOMAIN_AFFECT_LIVE:
            raise Conflict(f"{device['id']} is USB 3 and the running VM has no xHCI "
                           "controller; stop it and attach persistently (one is added then)",
                           code="usb_controller_missing", details={"device": device["id"]})
        index = max([c["index"] for c in controllers], default=-1) + 1
        _attach_device(dom, domxml.to_text(domxml.usb_controller_xml(index)), flags)
        xhci = {"index": index}
    return domxml.to_text(domxml.hostdev_xml(kind, device, usb_bus=xhci["index"]))


def _attach_device(dom, element, flags):
    _device_change(dom, dom.attachDeviceFlags, element, flags,
                   lambda devices, added: devices.append(added))


def _detach_device(dom, element, flags):
    _device_change(dom, dom.detachDeviceFlags, element, flags, _remove_hostdev)


def _device_change(dom, call, element, flags, edit):
    """`call(element, flags)` (attachDeviceFlags or detachDeviceFlags); drivers without it
    (libvirt's test driver) get, for config-only changes, a redefine of the inactive XML
    after `edit(devices, parsed element)`: what the call does to the XML."""
    try:
        call(element, flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT or \
                flags != libvirt.VIR_DOMAIN_AFFECT_CONFIG:
            raise
        root = domxml.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        edit(root.find("devices"), domxml.parse(element))
        dom.connect().defineXML(ET.tostring(root, encoding="unicode"))


def _remove_hostdev(devices, gone):
    """Drop the hostdev that passes through what `gone` does (aliases aside)."""
    wanted = _source_of(gone)
    for hostdev in devices.findall("hostdev"):
        if _source_of(hostdev) == wanted:
            devices.remove(hostdev)
            return


def _source_of(hostdev):
    """What a hostdev element passes through (domxml's reading, alias left out)."""
    wrapper = ET.Element("domain")
    ET.SubElement(wrapper, "devices").append(hostdev)
    return [{key: value for key, value in entry.items() if key != "alias"}
            for entry in domxml.hostdevs(wrapper)]


def detach_live(virt, dom, vm, alias, element, what):
    """Ask for the unplug under the host lock, then wait (bounded) for libvirt's
    device-removed event without it: the guest decides how long this takes."""
    removed = virt.removal_waiter(vm, alias)
    try:
        with virt.lock.held():
            dom.detachDeviceFlags(element, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if not removed.wait(virt.detach_timeout_s) and _alias_live(dom, alias):
            raise Conflict(f"the guest in {vm} did not release {what} within "
                           f"{virt.detach_timeout_s:g} s; the unplug request stays pending in "
                           "QEMU, so try again later or stop the VM", code="detach_timeout",
                           details={"device": what, "timeout_s": virt.detach_timeout_s})
    finally:
        virt.forget_waiter(vm, alias)


def _alias_live(dom, alias):
    return any(a.get("name") == alias for a in domxml.parse(dom.XMLDesc(0)).iter("alias"))


def _flags(live, persistent):
    return ((libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
            | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if persistent else 0))


def _usb_versions(virt, current):
    versions = []
    for entry in current:
        if entry["type"] == "usb":
            device = virt.inventory.usb(entry["id"])
            versions.append(device.get("usb_version") if device else None)
    return versions
