"""Placement over whole hosts: status, capacity, overcommit, strategies, anti-affinity, GPUs.

The world is built from the hosts the agent tests record (`tests.hosts`), run through the
same inventory core as the agent, then turned into the views the controller hands over.
"""

import dataclasses

import pytest

from hostplane.core.pci import build_pci_inventory
from hostplane.core.scheduler import (DeviceView, GpuAsk, HostView, PlacementRequest, Policy,
                                      Snapshot, VmView, place)
from hostplane.core.usb import build_usb_device, version_major
from tests.hosts import gpu_server, q35_node, small_gpu_host
from tests.synthetic import usb_attributes

GPU_MODEL = {"vendor_id": "10de", "device_id": "1eb8"}   # small_gpu_host's two GPUs


def pci_models(host):
    """{id: agent model dict} of a described host's PCI functions, as the agent reports them."""
    records = [{"address": f.address, "vendor_id": f.vendor, "device_id": f.device,
                "class_code": f.class_code, "driver": f.driver, "iommu_group": f.iommu_group,
                "numa_node": f.numa_node, "physfn": f.physfn, "virtfns": f.virtfns,
                **({"sriov_totalvfs": f.sriov_totalvfs, "sriov_numvfs": len(f.virtfns)}
                   if f.sriov_totalvfs is not None else {})} for f in host.pci]
    return build_pci_inventory(records)


def inventory(host_id, host, **overrides):
    """DeviceViews of a described host as the agent reports it; overrides: {id: {field: v}}."""
    views = [DeviceView(host_id, "pci", d["id"], d["type"], d["vendor_id"], d["device_id"],
                        "enabled", "ready", None, False, d["assignable"], d["iommu_group"], None)
             for d in pci_models(host).values()]
    for usb in host.usb:
        d = build_usb_device(usb.sys_name, usb_attributes(usb))
        views.append(DeviceView(host_id, "usb", d["id"], "usb", d["vendor_id"], d["product_id"],
                                "enabled", "ready", None, False, d["assignable"], None,
                                version_major(d["usb_version"])))
    return [dataclasses.replace(v, **overrides.get(v.id, {})) for v in views]


def host(host_id, cluster="c1", **fields):
    values = dict(status="connected", state="enabled", iommu_enabled=True, iommu_ready=True,
                  cpu_threads=16, memory_mib=65536, used_vcpus=0, used_memory_mib=0)
    values.update(fields)
    return HostView(host_id, cluster, **values)


def request(**fields):
    values = dict(name="vm-new", vcpus=2, memory_mib=4096)
    values.update(fields)
    return PlacementRequest(**values)


def world(hosts, devices=(), vms=()):
    return Snapshot.build(hosts, devices, vms)


def test_gpu_model_present_only_on_host_b_lands_on_b():
    snapshot = world([host("host-a"), host("host-b")],
                     inventory("host-a", q35_node()) + inventory("host-b", small_gpu_host()))
    placement = place(request(gpus=[GpuAsk(**GPU_MODEL)]), snapshot)
    assert placement.chosen.host_id == "host-b"
    assert [c.host_id for c in placement.ranked] == ["host-b"]
    assert placement.rejected == {"host-a": ("no GPU 10de:1eb8 on this host",)}


def test_hosts_lacking_the_device_show_their_state_and_everything_they_lack():
    snapshot = world([host("host-a", status="disconnected", state="maintenance"), host("host-b")],
                     inventory("host-a", q35_node()) + inventory("host-b", small_gpu_host()))
    stick = "0781:5567:4C530001"
    placement = place(request(gpus=[GpuAsk(**GPU_MODEL)], usb=[stick]), snapshot)
    assert placement.chosen.host_id == "host-b"
    assert placement.rejected == {"host-a": ("disconnected", "in maintenance",
                                             "no GPU 10de:1eb8 on this host",
                                             f"USB {stick} is on host-b")}


def test_gpu_audio_function_shares_group_and_is_claimed_with_gpu():
    snapshot = world([host("host-b")], inventory("host-b", small_gpu_host()))
    placement = place(request(gpus=[GpuAsk(id="0000:3b:00.0")]), snapshot)
    assert placement.chosen.devices == (("pci", "0000:3b:00.0"), ("pci", "0000:3b:00.1"))


def test_more_gpus_than_any_host_has_rejects_every_host_with_counts():
    snapshot = world([host("host-a"), host("host-b")],
                     inventory("host-a", q35_node()) + inventory("host-b", small_gpu_host()))
    placement = place(request(gpus=[GpuAsk(count=3, **GPU_MODEL)]), snapshot)
    assert placement.chosen is None
    assert placement.rejected == {"host-a": ("no GPU 10de:1eb8 on this host",),
                                  "host-b": ("only 2 of 3 GPUs 10de:1eb8 free",)}


def test_eight_gpu_server_gives_all_eight_with_their_audio_functions():
    snapshot = world([host("big", cpu_threads=128, memory_mib=1048576)],
                     inventory("big", gpu_server()))
    eight = place(request(gpus=[GpuAsk(vendor_id="10de", device_id="20b5", count=8)]), snapshot)
    claimed = eight.chosen.devices
    assert len(claimed) == 16 and len(set(claimed)) == 16
    nine = place(request(gpus=[GpuAsk(vendor_id="10de", device_id="20b5", count=9)]), snapshot)
    assert nine.rejected["big"] == ("only 8 of 9 GPUs 10de:20b5 free",)


def test_gpu_attached_to_another_vm_is_named_with_its_holder():
    devices = inventory("host-b", small_gpu_host(),
                        **{"0000:3b:00.0": {"status": "attached", "vm": "vm-7"}})
    snapshot = world([host("host-b")], devices)
    by_id = place(request(gpus=[GpuAsk(id="0000:3b:00.0")]), snapshot)
    assert by_id.rejected["host-b"] == ("GPU 0000:3b:00.0 attached to vm-7",)
    two = place(request(gpus=[GpuAsk(count=2, **GPU_MODEL)]), snapshot)
    assert two.rejected["host-b"] == ("GPU 0000:3b:00.0 attached to vm-7",
                                      "only 1 of 2 GPUs 10de:1eb8 free")
    one = place(request(gpus=[GpuAsk(**GPU_MODEL)]), snapshot)
    assert one.chosen.devices == (("pci", "0000:af:00.0"), ("pci", "0000:af:00.1"))


def test_reasons_carry_codes_whatever_their_sentence_mentions():
    devices = inventory("host-b", small_gpu_host(),
                        **{"0000:3b:00.0": {"status": "attached", "vm": "USB-kiosk"}})
    snapshot = world([host("host-b", memory_mib=1024), host("care", state="maintenance")],
                     devices)
    placement = place(request(gpus=[GpuAsk(id="0000:3b:00.0")]), snapshot)
    assert [(r.code, r) for r in placement.rejected["host-b"]] == [
        ("not_enough_memory", "not enough memory: 1024 MiB free, 4096 asked"),
        ("device_attached", "GPU 0000:3b:00.0 attached to USB-kiosk")]
    assert [r.code for r in placement.rejected["care"]] == ["host_maintenance", "no_such_device"]


def test_every_reason_code_is_documented_once_with_its_meaning():
    import os
    import re
    from hostplane.core.reasons import CODES
    docs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "controller.rst")
    with open(docs) as text:
        rows = re.findall(r"^``([a-z_]+)``\s{2,}(.+)$", text.read(), re.M)
    assert dict(rows) == CODES


@pytest.mark.parametrize("sibling, why", [
    ({"state": "disabled"}, "held by host"),
    ({"assignable": False}, "held by host"),
    ({"status": "attached", "vm": "vm-3"}, "attached to vm-3"),
    ({"status": "unavailable"}, "unavailable"),
])
def test_iommu_group_with_an_unusable_sibling_is_not_viable(sibling, why):
    devices = inventory("host-b", small_gpu_host(), **{"0000:3b:00.1": sibling})
    snapshot = world([host("host-b")], devices)
    placement = place(request(gpus=[GpuAsk(id="0000:3b:00.0")]), snapshot)
    assert placement.rejected["host-b"] == (f"IOMMU group 11 not viable: 0000:3b:00.1 {why}",)
    by_model = place(request(gpus=[GpuAsk(**GPU_MODEL)]), snapshot)
    assert by_model.chosen.devices[0] == ("pci", "0000:af:00.0")


def test_two_gpus_in_one_group_are_claimed_together_and_both_count():
    devices = inventory("host-b", small_gpu_host(),
                        **{gpu: {"iommu_group": 11} for gpu in ("0000:af:00.0", "0000:af:00.1")})
    snapshot = world([host("host-b")], devices)
    placement = place(request(gpus=[GpuAsk(count=2, **GPU_MODEL)]), snapshot)
    assert sorted(placement.chosen.devices) == [("pci", a) for a in (
        "0000:3b:00.0", "0000:3b:00.1", "0000:af:00.0", "0000:af:00.1")]


@pytest.mark.parametrize("device, reason", [
    ({"state": "disabled"}, "GPU 0000:3b:00.0 disabled by admin"),
    ({"status": "unavailable"}, "GPU 0000:3b:00.0 unavailable"),
    ({"assignable": False}, "GPU 0000:3b:00.0 not assignable"),
])
def test_gpu_itself_unusable_says_why(device, reason):
    snapshot = world([host("host-b")],
                     inventory("host-b", small_gpu_host(), **{"0000:3b:00.0": device}))
    placement = place(request(gpus=[GpuAsk(id="0000:3b:00.0")]), snapshot)
    assert placement.rejected["host-b"] == (reason,)


def test_gpu_needs_the_host_iommu_switched_on_and_ready():
    devices = inventory("off", small_gpu_host()) + inventory("unready", small_gpu_host())
    snapshot = world([host("off", iommu_enabled=False), host("unready", iommu_ready=False)],
                     devices)
    placement = place(request(gpus=[GpuAsk(**GPU_MODEL)]), snapshot)
    assert placement.rejected == {"off": ("host IOMMU switched off",),
                                  "unready": ("host IOMMU not ready",)}
    assert {c.host_id for c in place(request(), snapshot).ranked} == {"off", "unready"}


def test_host_status_and_admin_state_reject_with_their_names():
    snapshot = world([host("gone", status="disconnected"), host("new", status="connecting"),
                      host("off", state="disabled"), host("care", state="maintenance"),
                      host("ok")])
    placement = place(request(), snapshot)
    assert placement.chosen.host_id == "ok"
    assert placement.rejected == {"gone": ("disconnected",), "new": ("still connecting",),
                                  "off": ("disabled",), "care": ("in maintenance",)}


def test_not_enough_memory_names_free_and_asked():
    snapshot = world([host("a", memory_mib=8192, used_memory_mib=6144)])
    placement = place(request(memory_mib=4096), snapshot)
    assert placement.rejected["a"] == ("not enough memory: 2048 MiB free, 4096 asked",)


def test_cpu_and_memory_overcommit_ratios_stretch_capacity():
    snapshot = world([host("a", cpu_threads=4, used_vcpus=14, memory_mib=8192,
                           used_memory_mib=6144)])
    ask = request(vcpus=4, memory_mib=4096)
    assert place(ask, snapshot).rejected["a"] == (
        "not enough CPU: 2 vCPUs free, 4 asked", "not enough memory: 2048 MiB free, 4096 asked")
    roomy = Policy(cpu_overcommit=5.0, memory_overcommit=1.5)
    assert place(ask, snapshot, roomy).chosen.host_id == "a"


@pytest.mark.parametrize("strategy, best", [("least-cpu", "idle-cpu"),
                                            ("least-memory", "idle-memory")])
def test_strategy_ranks_least_used_host_first(strategy, best):
    snapshot = world([host("idle-cpu", used_vcpus=0, used_memory_mib=40000),
                      host("idle-memory", used_vcpus=40, used_memory_mib=0)])
    placement = place(request(strategy=strategy), snapshot)
    assert [c.host_id for c in placement.ranked][0] == best
    assert placement.ranked[0].score > placement.ranked[1].score


def test_enforced_strategy_rejects_hosts_over_the_limit_preferred_only_ranks():
    snapshot = world([host("busy", used_vcpus=56), host("calm", used_vcpus=8)])
    preferred = place(request(vcpus=4), snapshot)
    assert [c.host_id for c in preferred.ranked] == ["calm", "busy"]
    enforced = place(request(vcpus=4), snapshot, Policy(strategy_mode="enforced"))
    assert [c.host_id for c in enforced.ranked] == ["calm"]
    assert enforced.rejected["busy"] == ("CPU use would be 94%, over the 80% limit of least-cpu",)


def test_enforced_anti_affinity_rejects_host_holding_a_group_member():
    vms = [VmView("vm-2", "a", "running", "db"), VmView("vm-9", "b", "running", "web")]
    snapshot = world([host("a"), host("b")], vms=vms)
    placement = place(request(anti_affinity_group="db"), snapshot)
    assert [c.host_id for c in placement.ranked] == ["b"]
    assert placement.rejected == {"a": ("anti-affinity group db has vm-2 here",)}


def test_soft_anti_affinity_ranks_group_hosts_last_but_keeps_them():
    vms = [VmView("vm-2", "a", "running", "db")]
    snapshot = world([host("a"), host("b", used_vcpus=40)], vms=vms)
    placement = place(request(anti_affinity_group="db", anti_affinity="soft"), snapshot)
    assert [c.host_id for c in placement.ranked] == ["b", "a"]
    assert placement.rejected == {}


def test_anti_affinity_groups_of_other_tenants_do_not_count():
    vms = [VmView("their-db", "a", "running", "db", tenant="other")]
    snapshot = world([host("a")], vms=vms)
    assert place(request(anti_affinity_group="db", tenant="acme"), snapshot).chosen.host_id == "a"


def test_requested_host_and_cluster_narrow_the_choice():
    snapshot = world([host("a", "c1"), host("b", "c2"), host("c", "c2")])
    placement = place(request(host="b", cluster="c2"), snapshot)
    assert [c.host_id for c in placement.ranked] == ["b"]
    assert placement.rejected == {"a": ("not the requested host b", "not in cluster c2"),
                                  "c": ("not the requested host b",)}


def test_bad_requests_are_refused_before_placing():
    with pytest.raises(ValueError):
        GpuAsk(vendor_id="10de", device_id="1eb8", count=0)
    with pytest.raises(ValueError):
        GpuAsk(vendor_id="10de")
    with pytest.raises(ValueError):
        GpuAsk(id="0000:3b:00.0", count=2)
    with pytest.raises(ValueError):
        request(memory_mib=-1)
    with pytest.raises(ValueError):
        request(strategy="most-cpu")
    with pytest.raises(ValueError):
        Policy(strategy_mode="sometimes")
