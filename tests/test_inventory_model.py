"""The pure inventory rules: class → type, identities, assignability, IOMMU state."""

import pytest

from agent.hostinfo import iommu_state
from hostplane.core.ids import InvalidId, check_name, normalize_pci_address, normalize_usb_id, usb_id
from hostplane.core.pci import build_pci_inventory, type_for_class
from hostplane.core.usb import build_usb_device, usb_version


@pytest.mark.parametrize("class_code, expected", [
    ("030000", "gpu"), ("030200", "gpu"), ("038000", "gpu"), ("030100", "other"),
    ("020000", "nic"), ("028000", "nic"), ("010802", "nvme"), ("010601", "storage"),
    ("010400", "storage"), ("0c0330", "usb-controller"), ("0c0500", "other"),
    ("060400", "bridge"), ("060000", "bridge"), ("040300", "other"), ("ff0000", "other"),
])
def test_class_code_maps_to_device_type(class_code, expected):
    assert type_for_class(class_code) == expected


def record(address, class_code="030200", group=1, driver="nvidia", **extra):
    base = {"address": address, "vendor_id": "10de", "device_id": "1eb8",
            "class_code": class_code, "driver": driver, "iommu_group": group}
    base.update(extra)
    return base


def test_gpu_audio_function_shares_group_and_is_typed_gpu_audio():
    devices = build_pci_inventory([record("0000:3b:00.0"),
                                   record("0000:3b:00.1", "040300", driver="snd_hda_intel")])
    assert devices["0000:3b:00.1"]["type"] == "gpu-audio"
    assert devices["0000:3b:00.0"]["iommu_group_devices"] == ["0000:3b:00.0", "0000:3b:00.1"]
    assert devices["0000:3b:00.0"]["assignable"] and devices["0000:3b:00.1"]["assignable"]


def test_audio_controller_without_gpu_sibling_is_not_gpu_audio():
    devices = build_pci_inventory([record("0000:00:1f.3", "040300", group=3)])
    assert devices["0000:00:1f.3"]["type"] == "other"


@pytest.mark.parametrize("records, address, reason_part", [
    ([record("0000:00:01.0", "060400", driver="pcieport")], "0000:00:01.0", "bridges"),
    ([record("0000:3b:00.0", group=None)], "0000:3b:00.0", "no IOMMU group"),
    ([record("0000:00:17.0", "010601", driver="ahci")], "0000:00:17.0", "host-critical driver ahci"),
    ([record("0000:3b:00.0", group=7), record("0000:3a:00.0", "060400", group=7, driver="pcieport")],
     "0000:3b:00.0", "IOMMU group 7 also holds bridge 0000:3a:00.0"),
    ([record("0000:3b:00.0", group=7), record("0000:3b:00.2", "010601", group=7, driver="ahci")],
     "0000:3b:00.0", "0000:3b:00.2, bound to host-critical driver ahci"),
    ([record("0000:18:00.0", "020000", driver="ice", sriov_totalvfs=64, sriov_numvfs=4,
             virtfns=[])], "0000:18:00.0", "SR-IOV physical function with 4 VFs"),
])
def test_unassignable_devices_say_why(records, address, reason_part):
    device = build_pci_inventory(records)[address]
    assert device["assignable"] is False
    assert reason_part in device["not_assignable_reason"]


def test_sriov_fields_name_vfs_and_parent():
    pf = record("0000:18:00.0", "020000", driver="ice", sriov_totalvfs=64, sriov_numvfs=1,
                virtfns=["0000:18:01.0"])
    vf = record("0000:18:01.0", "020000", group=2, driver="iavf", physfn="0000:18:00.0")
    devices = build_pci_inventory([pf, vf])
    assert devices["0000:18:00.0"]["sriov"] == {"total_vfs": 64, "num_vfs": 1,
                                                "vfs": ["0000:18:01.0"]}
    assert devices["0000:18:01.0"]["physfn"] == "0000:18:00.0"
    assert devices["0000:18:01.0"]["assignable"] is True


@pytest.mark.parametrize("text, expected", [
    ("0000:3B:00.0", "0000:3b:00.0"), ("3b:00.1", "0000:3b:00.1"), (" 0000:00:02.7", "0000:00:02.7"),
    ("10000:E1:00.0", "10000:e1:00.0"), ("00010000:e1:00.0", "10000:e1:00.0"),
    ("ffffffff:00:1f.7", "ffffffff:00:1f.7"), ("000000:01:00.0", "0000:01:00.0")])
def test_pci_addresses_are_normalised(text, expected):
    assert normalize_pci_address(text) == expected


@pytest.mark.parametrize("text", ["../../etc", "zz:zz.z", "0000:3b:00.8", "0000:3b:20.0",
                                  "0000:3b:00", "", "0000:3b:00.0/../x", "000:3b:00.0",
                                  "100000000:3b:00.0", "10000:3b:00.0:1"])
def test_malformed_pci_addresses_are_refused(text):
    with pytest.raises(InvalidId):
        normalize_pci_address(text)


def test_usb_ids_prefer_serial_and_fall_back_to_port():
    assert usb_id("0781", "5567", "4C530001", "1-1.1") == "0781:5567:4C530001"
    assert usb_id("046D", "C31C", None, "1-1.2") == "046d:c31c@1-1.2"
    assert usb_id("0627", "0001", "28754-0000:00:04.0-1", "1-1") == "0627:0001:28754-0000_00_04.0-1"
    for good in ("0781:5567:4C530001", "046d:c31c@1-1.2", "1d6b:0002@usb1"):
        assert normalize_usb_id(good) == good
    for bad in ("../../etc", "0781:5567", "0781:5567:a/b", "zzzz:5567:1", "046d:c31c@x"):
        with pytest.raises(InvalidId):
            normalize_usb_id(bad)


def test_usb_device_model_reports_version_speed_and_hubs():
    stick = build_usb_device("1-1.1", {"idVendor": "0781", "idProduct": "5567", "version": " 2.10",
                                       "speed": "480", "serial": "ABC", "bDeviceClass": "00",
                                       "busnum": "1", "devnum": "3"})
    assert (stick["usb_version"], stick["speed_mbps"], stick["assignable"]) == ("2.10", 480, True)
    keyboard = build_usb_device("1-1.2", {"idVendor": "046d", "idProduct": "c31c", "version": " 1.10",
                                          "speed": "1.5", "bDeviceClass": "00"})
    assert keyboard["speed_mbps"] == 1.5 and keyboard["id"] == "046d:c31c@1-1.2"
    hub = build_usb_device("1-1", {"idVendor": "05e3", "idProduct": "0610", "bDeviceClass": "09"})
    root = build_usb_device("usb1", {"idVendor": "1d6b", "idProduct": "0002", "bDeviceClass": "09"})
    assert not hub["assignable"] and "hub" in hub["not_assignable_reason"]
    assert not root["assignable"] and "root hub" in root["not_assignable_reason"]
    assert usb_version(" 3.20") == "3.20" and usb_version("2.00") == "2.00"
    assert usb_version(None) is None and usb_version("0210") is None


@pytest.mark.parametrize("cmdline, groups, enabled, ready", [
    ("root=/dev/sda intel_iommu=on iommu=pt", 12, True, True),
    ("root=/dev/sda intel_iommu=on", 0, True, False),      # asked for, firmware has VT-d off
    ("root=/dev/sda", 0, False, False),
    ("root=/dev/sda", 40, True, True),                      # on by default (AMD, some kernels)
    ("root=/dev/sda amd_iommu=off", 0, False, False),
])
def test_iommu_state_separates_kernel_enabled_from_ready(cmdline, groups, enabled, ready):
    state = iommu_state(cmdline, groups)
    assert (state["kernel_enabled"], state["ready"], state["groups"]) == (enabled, ready, groups)


@pytest.mark.parametrize("name", ["../x", "x" * 200, "<x>", "", "a b", "-lead"])
def test_bad_names_are_refused(name):
    with pytest.raises(InvalidId):
        check_name(name)


# --- rules seen on real machines (issue 14) ----------------------------------------------
@pytest.mark.parametrize("vendor, device", [("1a03", "2000"), ("102b", "0522"), ("102b", "0532"),
                                            ("102b", "0533"), ("102b", "0534"), ("102b", "0536"),
                                            ("102b", "0538"), ("19e5", "1711")])
def test_bmc_display_is_typed_display_never_gpu_and_not_offered(vendor, device):
    bmc = record("0000:03:00.0", "030000", group=4, driver="ast", vendor_id=vendor,
                 device_id=device)
    model = build_pci_inventory([bmc, record("0000:3b:00.0")])
    assert model["0000:03:00.0"]["type"] == "display"
    assert model["0000:03:00.0"]["assignable"] is False
    assert "BMC display" in model["0000:03:00.0"]["not_assignable_reason"]
    assert model["0000:3b:00.0"]["type"] == "gpu"


def test_a_matrox_card_that_is_no_bmc_model_stays_a_gpu():
    card = record("0000:03:00.0", "030000", vendor_id="102b", device_id="0525")
    assert build_pci_inventory([card])["0000:03:00.0"]["type"] == "gpu"


@pytest.mark.parametrize("class_code, header, expected_type, assignable", [
    ("068000", 0, "nvswitch", True),      # NVSwitch: class "other bridge", endpoint header
    ("068000", None, "bridge", False),    # no config space: the class decides
    ("068000", 1, "bridge", False),
    ("060400", 1, "bridge", False),       # PCI-to-PCI bridge
    ("060000", 0, "bridge", False),       # host bridge: header 0, still kept out
    ("060100", 0, "bridge", False),       # ISA bridge
    ("060700", 2, "bridge", False),       # CardBus
    ("058000", 1, "bridge", False),       # header says bridge whatever the class
])
def test_bridge_is_decided_by_header_type_with_class_fallback(class_code, header,
                                                              expected_type, assignable):
    switch = record("0000:c4:00.0", class_code, group=30, driver="nvidia-nvswitch",
                    header_type=header, device_id="1af1")
    device = build_pci_inventory([switch])["0000:c4:00.0"]
    assert (device["type"], device["assignable"]) == (expected_type, assignable)


def test_function_behind_vmd_is_refused_naming_the_controller():
    vmd = record("0000:00:0e.0", "010400", group=9, driver="vmd", vendor_id="8086",
                 device_id="9a0b", header_type=0)
    port = record("10000:e0:06.0", "060400", group=9, driver="pcieport", header_type=1,
                  upstream=["0000:00:0e.0"])
    drive = record("10000:e1:00.0", "010802", group=9, driver="nvme", vendor_id="144d",
                   device_id="a80a", header_type=0, upstream=["0000:00:0e.0", "10000:e0:06.0"])
    model = build_pci_inventory([vmd, port, drive])
    assert model["10000:e1:00.0"]["assignable"] is False
    assert "behind Intel VMD controller 0000:00:0e.0" in \
        model["10000:e1:00.0"]["not_assignable_reason"]
    assert model["10000:e1:00.0"]["upstream"] == ["0000:00:0e.0", "10000:e0:06.0"]


def test_domain_above_ffff_without_a_known_chain_still_says_vmd():
    drive = record("10000:e1:00.0", "010802", group=3, driver="nvme")
    reason = build_pci_inventory([drive])["10000:e1:00.0"]["not_assignable_reason"]
    assert "PCI domain 10000" in reason and "VMD" in reason


def test_host_uses_make_a_function_and_its_group_unassignable():
    disk = record("0000:01:00.0", "010802", group=5, driver="nvme")
    sibling = record("0000:01:00.1", "020000", group=5, driver="igb")
    free = record("0000:02:00.0", "010802", group=6, driver="nvme")
    uses = {"0000:01:00.0": ["filesystem mounted at / on nvme0n1p2"]}
    model = build_pci_inventory([disk, sibling, free], host_uses=uses)
    assert model["0000:01:00.0"]["not_assignable_reason"] == \
        "carries the host's own filesystem mounted at / on nvme0n1p2"
    assert (model["0000:01:00.0"]["host_use"], model["0000:02:00.0"]["host_use"]) == \
        ("in_use", "none")
    assert "0000:01:00.0, which carries the host's own" in \
        model["0000:01:00.1"]["not_assignable_reason"]
    assert model["0000:02:00.0"]["assignable"] is True


def test_captured_tree_says_host_use_unknown_rather_than_guessing():
    device = build_pci_inventory([record("0000:01:00.0", "010802", driver="nvme")],
                                 host_uses=None)["0000:01:00.0"]
    assert (device["host_use"], device["host_uses"], device["assignable"]) == \
        ("unknown", [], True)


def test_device_unknown_to_pci_ids_gets_lspci_fallback_name():
    b200 = record("0000:1b:00.0", device_id="2901")
    names = {("10de", "2901"): ("NVIDIA Corporation", None)}
    device = build_pci_inventory([b200], names=lambda v, d: names[(v, d)])["0000:1b:00.0"]
    assert (device["vendor_name"], device["device_name"]) == \
        ("NVIDIA Corporation", "NVIDIA Corporation Device 2901")
    unknown_vendor = build_pci_inventory([record("0000:1b:00.0", vendor_id="1ed5")],
                                         names=lambda v, d: (None, None))["0000:1b:00.0"]
    assert unknown_vendor["device_name"] == "Vendor 1ed5 Device 1eb8"


def test_iommu_groups_are_one_rule_for_dicts_rows_and_views():
    from types import SimpleNamespace

    from hostplane.core.pci import group_siblings, iommu_groups, sibling_ids
    gpu, audio, nic = ({"id": a, "iommu_group": g} for a, g in
                       (("0000:3b:00.0", 11), ("0000:3b:00.1", 11), ("0000:5e:00.0", None)))
    assert iommu_groups([gpu, audio, nic]) == {11: [gpu, audio]}
    assert group_siblings(gpu, [gpu, audio, nic]) == [audio] and group_siblings(nic, [nic]) == []
    row, other = SimpleNamespace(iommu_group=4), SimpleNamespace(iommu_group=4)
    assert iommu_groups([row, other]) == {4: [row, other]}
    assert group_siblings(row, [row, other]) == [other]
    assert sibling_ids({"id": "0000:3b:00.0",
                        "iommu_group_devices": ["0000:3b:00.0", "0000:3b:00.1"]}) == \
        ["0000:3b:00.1"]
