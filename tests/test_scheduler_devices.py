"""USB locality and limits, tenants' view of devices, and devices added to an existing VM."""

import dataclasses

from hostplane.core.scheduler import GpuAsk, Snapshot, VmView, place
from hostplane.core.usb import PER_VM_LIMITS
from tests.hosts import q35_node, small_gpu_host
from tests.test_scheduler import GPU_MODEL, host, inventory, request

STICK = "0781:5567:4C530001"        # small_gpu_host: USB 2 stick with a serial
KEYBOARD = "046d:c31c@1-1.2"        # small_gpu_host: USB 1.1 keyboard, no serial
TABLET = "0627:0001:28754-0000_00_04.0-1"   # q35_node: QEMU tablet


def two_hosts(a_overrides=None, b_overrides=None, vms=(), a_fields=None, b_fields=None):
    """host-a: the q35 node (no GPU); host-b: the small GPU host with the stick and keyboard."""
    devices = (inventory("host-a", q35_node(), **(a_overrides or {}))
               + inventory("host-b", small_gpu_host(), **(b_overrides or {})))
    return Snapshot.build([host("host-a", **(a_fields or {})), host("host-b", **(b_fields or {}))],
                          devices, vms)


def extra_usb(snapshot, template_id, count, major):
    """`count` more USB devices like `template_id`, each with its own serial."""
    template = next(d for d in snapshot.devices if d.id == template_id)
    return [dataclasses.replace(template, id=f"{template.vendor_id}:{template.product_id}:X{n}",
                                usb_major=major) for n in range(count)]


def test_usb_on_another_host_is_named_and_the_vm_lands_with_it():
    placement = place(request(usb=[STICK]), two_hosts())
    assert placement.chosen.host_id == "host-b"
    assert placement.chosen.devices == (("usb", STICK),)
    assert placement.rejected == {"host-a": (f"USB {STICK} is on host-b",)}


def test_all_usb_devices_of_a_vm_must_be_on_one_host():
    placement = place(request(usb=[STICK, TABLET]), two_hosts())
    assert placement.chosen is None
    assert placement.rejected == {"host-a": (f"USB {STICK} is on host-b",),
                                  "host-b": (f"USB {TABLET} is on host-a",)}


def test_unknown_usb_device_rejects_every_host():
    placement = place(request(usb=["dead:beef:NOPE"]), two_hosts())
    assert set(placement.rejected.values()) == {("USB dead:beef:NOPE not found on any host",)}


def test_usb_hub_and_held_usb_devices_say_why():
    snapshot = two_hosts(b_overrides={STICK: {"status": "attached", "vm": "vm-4"}})
    assert place(request(usb=["05e3:0610@1-1"]), snapshot).rejected["host-b"] == (
        "USB 05e3:0610@1-1 not assignable",)
    assert place(request(usb=[STICK]), snapshot).rejected["host-b"] == (
        f"USB {STICK} attached to vm-4",)


def test_per_vm_usb_limits_by_major_version():
    assert PER_VM_LIMITS == {1: 1, 2: 6, 3: 4}
    base = two_hosts()
    more = extra_usb(base, KEYBOARD, 1, 1) + extra_usb(base, STICK, 6, 2)
    snapshot = Snapshot.build(base.hosts, base.devices + tuple(more), ())
    usb_2 = [STICK] + [d.id for d in more[1:]]
    seven = place(request(usb=usb_2), snapshot)
    assert seven.rejected["host-b"] == ("USB 2.x limit: 7 for this VM, at most 6",)
    assert place(request(usb=usb_2[:6]), snapshot).chosen.host_id == "host-b"
    two_old = place(request(usb=[KEYBOARD, more[0].id]), snapshot)
    assert two_old.rejected["host-b"] == ("USB 1.x limit: 2 for this VM, at most 1",)
    assert two_old.rejected["host-a"][0] == "USB 1.x limit: 2 for this VM, at most 1"


def test_usb_already_held_by_an_existing_vm_counts_toward_its_limit():
    base = two_hosts(b_overrides={KEYBOARD: {"status": "attached", "vm": "vm-1"}})
    second = extra_usb(two_hosts(), KEYBOARD, 1, 1)
    snapshot = Snapshot.build(base.hosts, base.devices + tuple(second), ())
    vm = VmView("vm-1", "host-b", "running")
    placement = place(request(name="vm-1", usb=[second[0].id], existing_vm=vm), snapshot)
    assert placement.rejected["host-b"] == ("USB 1.x limit: 2 for this VM, at most 1",)


def test_tenant_sees_only_shared_gpus():
    unshared = two_hosts()
    hidden = place(request(gpus=[GpuAsk(**GPU_MODEL)], tenant="acme"), unshared)
    assert hidden.rejected["host-b"] == ("no GPU 10de:1eb8 on this host",)
    by_id = place(request(gpus=[GpuAsk(id="0000:3b:00.0")], tenant="acme"), unshared)
    assert by_id.rejected["host-b"] == ("no PCI device 0000:3b:00.0 on this host",)
    shared = two_hosts(b_overrides={"0000:af:00.0": {"shared": True}})
    placement = place(request(gpus=[GpuAsk(**GPU_MODEL)], tenant="acme"), shared)
    assert placement.chosen.devices == (("pci", "0000:af:00.0"), ("pci", "0000:af:00.1"))


def test_tenant_never_gets_usb_even_shared():
    snapshot = two_hosts(b_overrides={STICK: {"shared": True}})
    placement = place(request(usb=[STICK], tenant="acme"), snapshot)
    assert placement.chosen is None
    assert placement.rejected["host-b"] == ("USB devices are admin-only",)


def test_running_vm_takes_only_devices_of_its_own_host():
    vm = VmView("vm-1", "host-a", "running")
    placement = place(request(name="vm-1", usb=[STICK], existing_vm=vm), two_hosts())
    assert placement.chosen is None
    assert placement.rejected == {"host-a": (f"USB {STICK} is on host-b",),
                                  "host-b": ("vm-1 is running on host-a",)}


def test_existing_vm_is_not_counted_twice_on_its_own_host():
    vm = VmView("vm-1", "host-b", "running")
    full = two_hosts(b_fields={"memory_mib": 4096, "used_memory_mib": 4096})
    placement = place(request(name="vm-1", gpus=[GpuAsk(**GPU_MODEL)], existing_vm=vm), full)
    assert placement.chosen.host_id == "host-b"


def test_stopped_vm_without_devices_moves_to_where_its_usb_is():
    vm = VmView("vm-1", "host-a", "stopped")
    placement = place(request(name="vm-1", usb=[STICK], existing_vm=vm), two_hosts())
    assert placement.chosen.host_id == "host-b"
    assert placement.rejected == {"host-a": (f"USB {STICK} is on host-b",)}


def test_stopped_vm_moves_only_within_its_cluster():
    vm = VmView("vm-1", "host-a", "stopped")
    snapshot = two_hosts(b_fields={"cluster": "c2"})
    placement = place(request(name="vm-1", usb=[STICK], existing_vm=vm), snapshot)
    assert placement.rejected["host-b"] == ("vm-1 may move only within cluster c1",)


def test_stopped_vm_holding_devices_stays_on_its_host():
    vm = VmView("vm-1", "host-a", "stopped")
    snapshot = two_hosts(a_overrides={TABLET: {"status": "attached", "vm": "vm-1"}})
    placement = place(request(name="vm-1", usb=[STICK], existing_vm=vm), snapshot)
    assert placement.rejected["host-b"] == ("vm-1 holds devices on host-a",)


def test_stopped_vm_adding_a_gpu_does_not_move():
    vm = VmView("vm-1", "host-a", "stopped")
    placement = place(request(name="vm-1", gpus=[GpuAsk(**GPU_MODEL)], existing_vm=vm),
                      two_hosts())
    assert placement.rejected == {"host-a": ("no GPU 10de:1eb8 on this host",),
                                  "host-b": ("vm-1 is defined on host-a",)}


def test_vm_does_not_repel_itself_from_its_own_host():
    vm = VmView("vm-1", "host-b", "running", "db")
    snapshot = two_hosts(vms=[vm])
    placement = place(request(name="vm-1", anti_affinity_group="db", usb=[STICK],
                              existing_vm=vm), snapshot)
    assert placement.chosen.host_id == "host-b"
