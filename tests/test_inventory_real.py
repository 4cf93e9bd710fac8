"""The inventory on captured trees of real machines, compared with lspci on the same tree.

`lspci -A linux-sysfs -O sysfs.path=DIR` reads a captured tree with pciutils' own code, so
every field both report (ids, class, driver, NUMA node, names, the bridges above each
function) must agree: a disagreement fails here. The captures (tests/data/captures,
SOURCE.rst) are ghw's sysfs snapshots, with no `config` and no `uevent` files as trees
copied by capture tools often have, and the udev databases of two DGX servers
(`udevadm info --export-db`, laid out as their tree by `tests.udevdb`: `uevent` and
nesting, no `config`), which are also checked against the names the machine's own
databases gave at capture time; the generated HGX-like server (tests/hosts.py) has all.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter

import pytest

from agent.inventory.pciids import HostNames, PciIds, newest_copy
from tests.conftest import DATA
from tests.hosts import hgx_server
from tests.synthetic import write_sysfs_tree
from tests.udevdb import pci_functions, read_export_db, write_pci_tree

CAPTURES = os.path.join(DATA, "captures")
needs_lspci = pytest.mark.skipif(shutil.which("lspci") is None,
                                 reason="pciutils is installed by scripts/setup-host")


def unpack(name, tmp_path):
    with tarfile.open(os.path.join(CAPTURES, f"{name}.tar.gz")) as archive:
        archive.extractall(tmp_path, filter="data")
    return str(tmp_path / "sys")


def udev_capture(name, tmp_path):
    """(sysfs root, {address: recorded udev properties}) of a captured udev database."""
    devices = read_export_db(os.path.join(CAPTURES, f"{name}.udev.gz"))
    recorded = {props["PCI_SLOT_NAME"]: props for _, props in pci_functions(devices)}
    return write_pci_tree(devices, tmp_path / "sys"), recorded


def inventory_cli(root, *extra, check=True):
    result = subprocess.run([sys.executable, "-m", "agent.cli", "inventory", "--compact",
                             "--sysfs-root", root, *extra], capture_output=True, text=True,
                            env=dict(os.environ, HOSTPLANE_HOST_ID="captured"), timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
        return {d["id"]: d for d in json.loads(result.stdout)["pci"]}
    return result


def lspci(root, *options):
    command = ["lspci", "-A", "linux-sysfs", "-O", f"sysfs.path={root}/bus/pci", "-D", *options]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def lspci_records(root):
    """{address: {"Class", "Vendor", "Device", "Driver", "NUMANode", ...}} from -vmm -nn -k."""
    records = {}
    for block in lspci(root, "-vmm", "-nn", "-k").strip().split("\n\n"):
        fields = dict(line.split(":\t", 1) for line in block.splitlines() if ":\t" in line)
        records[fields["Slot"]] = fields
    return records


def lspci_paths(root):
    """{address: [bus:slot.fn of upstream functions, root port first]} from `lspci -PP`.

    lspci writes the whole path under the function's own domain (a VMD child's path
    starts `10000:00:0e.0/...`), so only bus:slot.function of each hop is compared.
    """
    paths = {}
    for line in lspci(root, "-PP", "-mm", "-n").splitlines():
        hops = line.split(" ", 1)[0].split("/")
        domain, first = hops[0].split(":", 1)
        paths[f"{domain}:{hops[-1]}" if len(hops) > 1 else hops[0]] = \
            ([first] + hops[1:])[:-1]
    return paths


def without_domain(addresses):
    return [address.split(":", 1)[1] for address in addresses]


def name_and_id(text):
    """`Intel Corporation [8086]` → ("Intel Corporation", "8086")."""
    match = re.fullmatch(r"(.*) \[([0-9a-f]{4,6})\]", text)
    return match.group(1), match.group(2)


def assert_agrees_with_lspci(root, inventory):
    theirs = lspci_records(root)
    paths = lspci_paths(root)
    assert sorted(theirs) == sorted(inventory), "both list the same functions"
    for address, device in inventory.items():
        fields = theirs[address]
        class_name, class_id = name_and_id(fields["Class"])
        vendor_name, vendor_id = name_and_id(fields["Vendor"])
        device_name, device_id = name_and_id(fields["Device"])
        assert (device["vendor_id"], device["device_id"]) == (vendor_id, device_id), address
        assert device["class_code"][:4] == class_id, address
        assert device["driver"] == fields.get("Driver"), address
        numa = fields.get("NUMANode")
        assert device["numa_node"] == (int(numa) if numa is not None else None), address
        assert device["vendor_name"] == vendor_name, address
        expected_name = device_name
        if device_name == "Device":   # lspci -mm says "Device [2901]" for unnamed devices
            expected_name = f"{vendor_name} Device {device_id}"
        assert device["device_name"] == expected_name, address
        assert without_domain(device["upstream"]) == paths[address], address
        if class_name in ("PCI bridge", "Host bridge", "ISA bridge", "CardBus bridge"):
            assert device["type"] == "bridge" and not device["assignable"], address


def assert_agrees_with_recorded_udev(recorded, inventory):
    """The machine's own udev database: its kernel's ids and drivers, its hwdb's names
    (udev words a model with its subsystem's name in parentheses when it knows one)."""
    assert sorted(recorded) == sorted(inventory)
    for address, props in recorded.items():
        device = inventory[address]
        assert f"{device['vendor_id']}:{device['device_id']}" == props["PCI_ID"].lower()
        assert device["driver"] == props.get("DRIVER"), address
        assert device["vendor_name"] == props["ID_VENDOR_FROM_DATABASE"], address
        model = props.get("ID_MODEL_FROM_DATABASE")
        if model is not None:
            assert model == device["device_name"] or \
                model.startswith(device["device_name"] + " ("), address


@needs_lspci
def test_laptop_capture_has_real_iommu_groups_and_agrees_with_lspci(tmp_path):
    root = unpack("thinkpad-x1c10", tmp_path)
    pci = inventory_cli(root)
    assert len(pci) == 23, "a tree without uevent files is read, not dropped"
    assert_agrees_with_lspci(root, pci)
    nvme = pci["0000:04:00.0"]
    assert (nvme["type"], nvme["iommu_group"], nvme["iommu_group_devices"]) == \
        ("nvme", 14, ["0000:04:00.0"])
    assert nvme["upstream"] == ["0000:00:06.0"]
    # A captured tree has no mounts to look at: the root drive is "unknown", not "free".
    assert nvme["host_use"] == "unknown" and nvme["assignable"] is True
    thunderbolt = {a for a, d in pci.items() if d["iommu_group"] == 8}
    assert thunderbolt == {"0000:00:0d.0", "0000:00:0d.2", "0000:00:0d.3"}
    pch = pci["0000:00:1f.3"]       # audio in the group of the ISA (eSPI) bridge
    assert pch["not_assignable_reason"] == "IOMMU group 13 also holds bridge 0000:00:1f.0"
    assert pci["0000:00:02.0"]["type"] == "gpu"      # integrated graphics is no BMC display


@needs_lspci
def test_dual_socket_server_capture_bmc_display_numa_and_lspci_agree(tmp_path):
    root = unpack("xeon-l5640-2s", tmp_path)
    pci = inventory_cli(root)
    assert len(pci) == 82
    assert_agrees_with_lspci(root, pci)
    types = Counter(d["type"] for d in pci.values())
    assert types["gpu"] == 0 and types["display"] == 1, "the BMC's Matrox is no GPU"
    matrox = pci["0000:07:03.0"]
    assert (matrox["vendor_id"], matrox["device_id"], matrox["assignable"]) == \
        ("102b", "0532", False)
    assert "BMC display" in matrox["not_assignable_reason"]
    assert matrox["upstream"] == ["0000:00:1e.0"]
    assert {d["numa_node"] for d in pci.values()} == {None, 0, 1}
    assert sorted(os.listdir(os.path.join(root, "devices/system/node"))).count("node1") == 1
    # Uncore functions are class 0600 with an endpoint header on this machine; no config
    # space in the capture, so the class keeps them bridges (and out of passthrough).
    assert all(d["type"] == "bridge" for a, d in pci.items() if a.startswith("0000:fe:"))


def dgx_inventory(name, functions, tmp_path):
    """The inventory of a captured DGX, checked against lspci and the machine's own
    udev: all functions read, 8 GPUs and the BMC's one display."""
    root, recorded = udev_capture(name, tmp_path)
    pci = inventory_cli(root)
    assert len(pci) == functions
    assert_agrees_with_lspci(root, pci)
    assert_agrees_with_recorded_udev(recorded, pci)
    types = Counter(d["type"] for d in pci.values())
    assert (types["gpu"], types["display"]) == (8, 1), "the BMC's ASPEED is no GPU"
    return pci, recorded


@needs_lspci
def test_dgx_a100_capture_counts_8_gpus_beside_its_bmc_display_and_nvswitches(tmp_path):
    pci, _ = dgx_inventory("dgx-a100", 281, tmp_path)
    assert {d["device_name"] for d in pci.values() if d["type"] == "gpu"} == \
        {"GA100 [A100 SXM4 40GB]"}
    aspeed = pci["0000:63:00.0"]
    assert (aspeed["vendor_id"], aspeed["device_id"], aspeed["assignable"]) == \
        ("1a03", "2000", False)
    assert "BMC display" in aspeed["not_assignable_reason"]
    assert aspeed["upstream"] == ["0000:60:05.2", "0000:62:00.0"]     # behind the AST1150
    assert pci["0000:62:00.0"]["type"] == "bridge"
    # Each GPU sits six PEX880xx switch ports below its AMD root port, as lspci -PP says.
    assert pci["0000:07:00.0"]["upstream"] == ["0000:00:01.1", "0000:01:00.0", "0000:02:00.0",
                                               "0000:03:00.0", "0000:04:00.0", "0000:05:00.0",
                                               "0000:06:00.0"]
    # The dump has no config space, so the header type is unknown and the class decides
    # (0680, "other bridge"): the six NVSwitches stay out of passthrough here; with a
    # config file they are endpoints (the generated HGX tree below).
    nvswitches = [d for d in pci.values() if (d["vendor_id"], d["device_id"]) == ("10de", "1af1")]
    assert len(nvswitches) == 6
    assert {(d["type"], d["device_name"]) for d in nvswitches} == \
        {("bridge", "GA100 [A100 NVSwitch]")}
    # No IOMMU groups in a udev dump (the host had its AMD IOMMUs on): nothing is offered.
    assert pci["0000:07:00.0"]["not_assignable_reason"].startswith("no IOMMU group")
    assert {d["numa_node"] for d in pci.values()} == {None}


@needs_lspci
def test_dgx_b200_capture_names_the_b200_its_own_database_did_not(tmp_path):
    pci, recorded = dgx_inventory("dgx-b200", 559, tmp_path)
    b200 = [a for a, d in pci.items() if (d["vendor_id"], d["device_id"]) == ("10de", "2901")]
    assert len(b200) == 8 and {pci[a]["type"] for a in b200} == {"gpu"}
    # The machine's own hwdb had no name for it; here it is named, at worst as lspci does.
    assert all("ID_MODEL_FROM_DATABASE" not in recorded[a] for a in b200)
    assert {pci[a]["device_name"] for a in b200} <= {"GB100 [B200]",
                                                     "NVIDIA Corporation Device 2901"}
    assert pci["0000:04:00.0"]["type"] == "display"
    assert pci["0000:04:00.0"]["upstream"] == ["0000:00:0c.0", "0000:03:00.0"]


@needs_lspci
def test_generated_hgx_server_types_names_vmd_and_links_agree_with_lspci(tmp_path):
    root = write_sysfs_tree(hgx_server(), tmp_path / "sys")
    pci = inventory_cli(root)
    assert_agrees_with_lspci(root, pci)
    types = Counter(d["type"] for d in pci.values())
    assert (types["gpu"], types["display"], types["nvswitch"]) == (8, 1, 6)
    for address, device in pci.items():
        if device["type"] == "nvswitch":      # config says endpoint: offered with the GPUs
            assert device["assignable"], device["not_assignable_reason"]
    assert "behind Intel VMD controller 0000:00:0e.0" in \
        pci["10000:e1:00.0"]["not_assignable_reason"]
    assert pci["10000:e1:00.0"]["upstream"] == ["0000:00:0e.0", "10000:e0:06.0"]
    # B200 (10de:2901) is newer than Debian 12's pci.ids: named by udev's hwdb when it
    # knows it (as lspci does, compared above), else in lspci's fallback form, never null.
    b200 = pci["0000:bd:00.0"]
    assert b200["device_name"] in ("GB100 [B200]", "NVIDIA Corporation Device 2901")
    assert pci["0000:07:00.0"]["link"] == {"current_speed": "16.0 GT/s PCIe",
                                           "current_width": 16, "max_speed": "16.0 GT/s PCIe",
                                           "max_width": 16}
    assert pci["0000:c4:00.0"]["link"] is None


def test_tree_whose_functions_cannot_be_read_fails_in_one_line(tmp_path):
    broken = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:00:01.0"
    broken.mkdir(parents=True)
    (broken / "vendor").write_text("0x8086\n")
    result = inventory_cli(str(tmp_path / "sys"), check=False)
    assert result.returncode == 1
    assert "0000:00:01.0: no uevent and no readable device, class file" in result.stderr
    assert "lists 1 functions and none could be read" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["errors"] == [
        {"kind": "pci", "id": "0000:00:01.0",
         "error": "no uevent and no readable device, class file"}]


def test_one_unreadable_function_is_reported_beside_the_readable_ones(tmp_path):
    root = write_sysfs_tree(hgx_server(), tmp_path / "sys")
    os.remove(os.path.join(root, "bus/pci/devices/0000:c4:00.0/uevent"))
    os.remove(os.path.join(root, "bus/pci/devices/0000:c4:00.0/class"))
    result = inventory_cli(root, check=False)
    assert result.returncode == 0
    body = json.loads(result.stdout)
    assert [e["id"] for e in body["errors"]] == ["0000:c4:00.0"]
    assert "0000:c5:00.0" in {d["id"] for d in body["pci"]}
    assert "pci 0000:c4:00.0: no uevent and no readable class file" in result.stderr


def test_missing_tree_is_a_one_line_error(tmp_path):
    result = inventory_cli(str(tmp_path / "nowhere"), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no such directory" in result.stderr


def test_newest_pci_ids_copy_wins_and_a_configured_one_is_used(tmp_path):
    old, new = tmp_path / "old.ids", tmp_path / "new.ids"
    old.write_text("#\tVersion: 2023.04.10\n10de  NVIDIA Corporation\n\t20b0  GA100\n")
    new.write_text("#\tVersion: 2025.06.01\n10de  NVIDIA Corporation\n\t2901  B200\n")
    assert newest_copy((str(new), str(old), str(tmp_path / "absent.ids"))) == str(new)
    assert PciIds(str(new)).names("10de", "2901") == ("NVIDIA Corporation", "B200")
    hwdb = tmp_path / "20-pci-vendor-model.hwdb"
    hwdb.write_text("pci:v000010DE*\n ID_VENDOR_FROM_DATABASE=NVIDIA Corporation\n\n"
                    "pci:v000010DEd000020B0*\n ID_MODEL_FROM_DATABASE=GA100 [A100 SXM4 40GB]\n\n"
                    "pci:v000010DEd00003182*\n ID_MODEL_FROM_DATABASE=GB110 [B300]\n")
    host = HostNames(pci_ids=(str(old), str(new)), hwdb=(str(hwdb),))
    assert [source.path for source in host.sources] == [str(new), str(old), str(hwdb)]
    assert host.names("10de", "20b0") == ("NVIDIA Corporation", "GA100")   # pci.ids first
    assert host.names("10de", "3182") == ("NVIDIA Corporation", "GB110 [B300]")
    assert HostNames(pci_ids=(str(old),), hwdb=()).names("10de", "2901") == \
        ("NVIDIA Corporation", None)     # the model then says "NVIDIA Corporation Device 2901"
    root = write_sysfs_tree(hgx_server(), tmp_path / "sys")
    result = subprocess.run([sys.executable, "-m", "agent.cli", "inventory", "--compact",
                             "--sysfs-root", root], capture_output=True, text=True, check=True,
                            env=dict(os.environ, HOSTPLANE_HOST_ID="x",
                                     HOSTPLANE_HOST_PCI_IDS=str(new)))
    pci = {d["id"]: d for d in json.loads(result.stdout)["pci"]}
    assert pci["0000:bd:00.0"]["device_name"] == "B200"


def test_names_are_kept_in_the_state_dir_until_a_database_changes(tmp_path):
    database, state = tmp_path / "pci.ids", tmp_path / "state"
    database.write_text("#\n10de  NVIDIA Corporation\n\t2901  GB100\n")
    state.mkdir()
    first = HostNames(pci_ids=(str(database),), hwdb=(), cache_dir=str(state))
    assert first.names("10de", "2901") == ("NVIDIA Corporation", "GB100")
    first.save()
    kept = json.loads((state / "pci-names.json").read_text())
    assert kept["names"] == {"10de:2901": ["NVIDIA Corporation", "GB100"]}
    assert HostNames(pci_ids=(str(database),), hwdb=(), cache_dir=str(state)).names(
        "10de", "2901") == ("NVIDIA Corporation", "GB100")
    database.write_text("#\n10de  NVIDIA Corporation\n\t2901  B200\n")   # the database updated
    again = HostNames(pci_ids=(str(database),), hwdb=(), cache_dir=str(state))
    assert again.names("10de", "2901") == ("NVIDIA Corporation", "B200")
    nowhere = HostNames(pci_ids=(str(database),), hwdb=(), cache_dir=str(tmp_path / "absent"))
    assert nowhere.names("10de", "2901") == ("NVIDIA Corporation", "B200")
    nowhere.save()                                      # no state dir: nothing written
    assert not (tmp_path / "absent").exists()


def test_inventory_command_keeps_names_but_never_moves_the_agents_generation(tmp_path):
    root, state = write_sysfs_tree(hgx_server(), tmp_path / "sys"), tmp_path / "state"
    state.mkdir()
    env = dict(os.environ, HOSTPLANE_HOST_ID="x", HOSTPLANE_HOST_STATE_DIR=str(state))
    outputs = [subprocess.run([sys.executable, "-m", "agent.cli", "inventory", "--sysfs-root",
                               root], capture_output=True, check=True, env=env).stdout
               for _ in range(2)]
    assert outputs[0] == outputs[1]                     # names read, then kept: same answer
    assert sorted(os.listdir(state)) == ["pci-names.json"]
    assert json.loads(outputs[0])["generation"] == 1
