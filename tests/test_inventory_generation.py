"""The generation number agrees across gunicorn workers and only moves on change."""

from agent.inventory.generation import SharedGeneration
from agent.inventory.pciids import PciIds


def test_two_workers_agree_on_the_generation_of_the_same_content(tmp_path):
    path = str(tmp_path / "inventory.generation")
    worker_a, worker_b = SharedGeneration(path), SharedGeneration(path)
    first = worker_a.observe("digest-1")
    assert worker_b.observe("digest-1") == first
    assert worker_a.observe("digest-1") == first          # unchanged content, same number
    second = worker_b.observe("digest-2")                 # worker b saw the hot-plug first
    assert second == first + 1
    assert worker_a.observe("digest-2") == second         # a catches up, no double bump


def test_generation_survives_an_agent_restart(tmp_path):
    path = str(tmp_path / "inventory.generation")
    before = SharedGeneration(path).observe("digest-1")
    after = SharedGeneration(path).observe("digest-2")
    assert after > before


def test_unwritable_state_dir_falls_back_to_counting_in_process(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    generation = SharedGeneration(str(blocker / "sub" / "inventory.generation"))
    assert generation.observe("a") == 1 and generation.observe("b") == 2


def test_names_fall_back_to_ids_when_pci_ids_is_missing(tmp_path):
    names = PciIds(str(tmp_path / "absent.ids"))
    assert names.names("10de", "1eb8") == (None, None)


def test_names_come_from_pci_ids(tmp_path):
    database = tmp_path / "pci.ids"
    database.write_text("# comment\n10de  NVIDIA Corporation\n\t1eb8  TU104GL [Tesla T4]\n"
                        "\t\t10de 12a2  Tesla T4\n10df  Emulex Corporation\n")
    names = PciIds(str(database))
    assert names.names("10de", "1eb8") == ("NVIDIA Corporation", "TU104GL [Tesla T4]")
    assert names.names("10de", "ffff") == ("NVIDIA Corporation", None)
    assert names.names("1234", "0001") == (None, None)


def test_a_vendors_last_device_keeps_its_whole_name(tmp_path):
    """The last line of a vendor's block lost its last character: 706 devices of Debian 12's
    pci.ids, `Tofino 2` read `Tofino`, `AT-2500TX V3 Ethernet` read `... Etherne`."""
    database = tmp_path / "pci.ids"
    database.write_text("#\n1d1c  Barefoot Networks, Inc.\n\t0010  Tofino\n\t0110  Tofino 2\n"
                        "1d1d  Next vendor\n")
    names = PciIds(str(database))
    assert names.names("1d1c", "0110") == ("Barefoot Networks, Inc.", "Tofino 2")
    assert names.names("1d1c", "0010") == ("Barefoot Networks, Inc.", "Tofino")
