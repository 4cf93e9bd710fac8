"""`choose` (the best few hosts, found through the capacity index) gives the answer of
`place` (every host judged): the same chosen host, score and devices, and when nothing
fits the same reasons for every host. Random clusters from hypothesis: host sizes equal,
near-equal and far apart, over-full and empty hosts, disconnected, disabled and
maintenance hosts, IOMMU switched off, shared and held GPUs, tenants, anti-affinity
enforced and soft, enforced strategy limits, overcommit, existing VMs, hosts changed in
place (`Snapshot.apply`), NUMA nodes and PCIe switches under numa and locality policies,
asks of GPU models and of pools (matched by model or by model and type) by count."""

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from hostplane.core import scheduler
from hostplane.core.placement_topology import NumaNode
from hostplane.core.placement_pools import PoolAsk
from hostplane.core.pools import PoolMatch
from hostplane.core.scheduler import (DeviceView, GpuAsk, HostView, PlacementRequest, Policy,
                                      Snapshot, VmView, choose, place)

MODELS = (("10de", "1eb8"), ("10de", "20b5"), ("1002", "740f"))
AUDIO = ("10de", "10f8")   # every GPU's audio function: many of one model per host
SIZES = (0, 1, 8, 16, 16, 17, 32, 32, 33, 64, 96, 128)
SWITCHES = ((), ("0000:00:01.0",), ("0000:00:01.0", "0000:10:00.0"),
            ("0000:00:02.0", "0000:20:00.0", "0000:21:08.0"))


def mostly(usual, *rare):
    return st.sampled_from([usual] * 6 + list(rare))


@st.composite
def host_parts(draw, number):
    host_id = f"h{number:02d}"
    threads = draw(st.sampled_from(SIZES))
    memory = draw(st.sampled_from((0, 4096, 8192, 8200, 65536, 65537, 131072)))
    host = HostView(host_id, draw(st.sampled_from(["c1", "c2", "c3"])),
                    draw(mostly("connected", "disconnected", "connecting")),
                    draw(mostly("enabled", "maintenance", "disabled")),
                    draw(mostly(True, False)), draw(mostly(True, False)), threads, memory,
                    draw(st.integers(0, threads * 5 + 2)), draw(st.integers(0, memory + 4096)),
                    draw(st.sampled_from([(), (NumaNode(0, threads, memory),),
                                          (NumaNode(0, threads // 2, memory // 2),
                                           NumaNode(1, threads // 2, memory // 2))])),
                    # a controller's own order of equal hosts, or plain id order ("")
                    tie=draw(st.sampled_from(["", "3f", "a0", "a0"])))
    devices, vms = [], []
    for slot in range(draw(st.integers(0, 4))):
        vendor, product = draw(st.sampled_from(MODELS))
        group = draw(st.integers(0, 3))
        for fn, kind in ((0, "gpu"), (1, "gpu-audio")):
            held = draw(mostly(None, f"vm-{host_id}-{slot}"))
            devices.append(DeviceView(
                host_id, "pci", f"0000:{slot + 1:02x}:00.{fn}", kind, vendor,
                product if kind == "gpu" else AUDIO[1], draw(mostly("enabled", "disabled")),
                "attached" if held else draw(mostly("ready", "unavailable")), held,
                draw(st.booleans()), draw(mostly(True, False)), group, None, None,
                draw(st.sampled_from([None, 0, 1, -1])), draw(st.sampled_from(SWITCHES))))
    for slot in range(draw(st.integers(0, 2))):
        vms.append(VmView(f"vm-{number}-{slot}", host_id, draw(mostly("running", "stopped")),
                          draw(st.sampled_from([None, "db", "web"])),
                          draw(st.sampled_from([None, "acme"])), draw(st.sampled_from([None, 0, 1])),
                          draw(st.integers(1, 16)), draw(st.integers(1, 16384))))
    return host, devices, vms


@st.composite
def clusters(draw):
    parts = [draw(host_parts(number)) for number in range(draw(st.integers(1, 40)))]
    snapshot = Snapshot.build([p[0] for p in parts], [d for p in parts for d in p[1]],
                              [v for p in parts for v in p[2]])
    if draw(st.booleans()):   # some hosts changed, one gone, one new, in place
        changes = {}
        for number in draw(st.lists(st.integers(0, len(parts) + 1), max_size=4)):
            changes[f"h{number:02d}"] = (None if draw(st.booleans()) and number < len(parts)
                                         else draw(host_parts(number)))
        snapshot.apply(changes)
    return snapshot


@st.composite
def requests(draw, snapshot):
    asks = []
    for _ in range(draw(st.integers(0, 2))):
        if draw(mostly(False, True)):
            asks.append(GpuAsk(id=f"0000:{draw(st.integers(1, 4)):02x}:00.0"))
        else:
            vendor, product = draw(st.sampled_from(MODELS))
            asks.append(GpuAsk(vendor_id=vendor, device_id=product, count=draw(mostly(1, 2, 3))))
    existing = None
    if draw(mostly(False, True)) and snapshot.vms:
        vm = draw(st.sampled_from(snapshot.vms))
        existing = vm
    host_ids = [h.id for h in snapshot.hosts] or ["h00"]
    return PlacementRequest(
        "vm-new", draw(st.integers(1, 40)), draw(st.integers(1, 70000)), gpus=asks,
        host=draw(mostly(None, draw(st.sampled_from(host_ids)))),
        cluster=draw(mostly(None, "c1", "c9")),
        anti_affinity_group=draw(st.sampled_from([None, "db", "web"])),
        anti_affinity=draw(st.sampled_from(["enforced", "soft"])),
        strategy=draw(st.sampled_from(["least-cpu", "least-memory"])),
        tenant=draw(st.sampled_from([None, None, "acme"])), existing_vm=existing,
        numa=draw(mostly("none", "preferred", "required")),
        locality=draw(mostly("any", "same-switch", "same-numa")),
        locality_mode=draw(st.sampled_from(["preferred", "required"])),
        pools=draw(st.lists(st.builds(lambda model, count, typed: PoolAsk(
            f"pool-{model[1]}", PoolMatch(*model, type="gpu" if typed else None), count),
            st.sampled_from(MODELS + (AUDIO,)), mostly(1, 2, 3, 4, 5), st.booleans()),
            max_size=2)))


policies = st.builds(Policy, cpu_overcommit=st.sampled_from([1.0, 1.5, 4.0]),
                     memory_overcommit=st.sampled_from([1.0, 0.75, 1.25]),
                     strategy_mode=st.sampled_from(["preferred", "enforced"]),
                     strategy_limit=st.sampled_from([0.5, 0.8, 1.0]))


def assert_same_answer(snapshot, request, policy):
    full = place(request, snapshot, policy)
    quick = choose(request, snapshot, policy)
    assert quick.chosen == full.chosen
    if full.chosen is None:
        assert quick.rejected == full.rejected
    else:
        assert quick.ranked == (full.chosen,)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_indexed_choice_is_the_full_walks_first_candidate(data):
    snapshot = data.draw(clusters())
    request, policy = data.draw(requests(snapshot)), data.draw(policies)
    with mock.patch.object(scheduler, "DIRECT_LIMIT", 0):   # always through the index
        assert_same_answer(snapshot, request, policy)
    assert_same_answer(snapshot, request, policy)


def test_a_large_cluster_is_chosen_through_the_index_with_the_full_walks_answer():
    """600 hosts of mixed sizes: more than `choose` judges outright."""
    hosts = [HostView(f"h{n:03d}", "c1", "connected", "enabled", True, True,
                      (16, 32, 48)[n % 3], 65536 + n, (n * 7) % 90, (n * 131) % 60000)
             for n in range(600)]
    snapshot = Snapshot.build(hosts, [], [])
    for vcpus in (1, 10, 60, 200):
        for strategy in ("least-cpu", "least-memory"):
            request = PlacementRequest("vm-new", vcpus, 4096, strategy=strategy)
            assert_same_answer(snapshot, request, Policy())
            assert_same_answer(snapshot, request, Policy(strategy_mode="enforced"))


def test_equal_hosts_are_taken_in_their_tie_order_by_the_index_and_the_full_walk():
    """600 hosts alike: a controller that spreads ties ranks them by its own keys, not
    their ids, and the indexed choice agrees with the full walk's ranking; with no keys
    (`tie_break = "host-id"`), by id."""
    def cluster(tie):
        return Snapshot.build([HostView(f"h{n:03d}", "c1", "connected", "enabled", True, True,
                                        32, 65536, 4, 1024, tie=tie(n)) for n in range(600)],
                              [], [])
    request = PlacementRequest("vm-new", 2, 1024)
    for shift in (0, 5):
        def tie(n):
            return f"{(n * 7919 + shift) % 600:04d}"
        spread = cluster(tie)
        expected = [f"h{n:03d}" for n in sorted(range(600), key=tie)]
        assert expected[0] != "h000" or shift == 0
        assert [c.host_id for c in scheduler.place(request, spread).ranked] == expected
        with mock.patch.object(scheduler, "DIRECT_LIMIT", 0):
            assert scheduler.choose(request, spread).chosen.host_id == expected[0]
        assert_same_answer(spread, request, Policy())
    by_id = cluster(lambda n: "")
    assert [c.host_id for c in scheduler.place(request, by_id).ranked][:2] == ["h000", "h001"]
    assert scheduler.choose(request, by_id).chosen.host_id == "h000"


def test_a_pool_ask_judges_only_hosts_with_enough_free_devices_of_its_model():
    """600 hosts of one NVMe drive each, free on all; 20 hosts hold 4 more, 3 of them free.
    Asking 3 of the pool judges hosts from the 20 alone (hosts with at least 2 free, the
    power of two below 3), and finds the full walk's choice."""
    nvme = ("144d", "a808")
    hosts, devices = [], []
    for n in range(600):
        host_id = f"h{n:03d}"
        hosts.append(HostView(host_id, "c1", "connected", "enabled", True, True, 32, 65536,
                              n % 30, 0))
        drives = 5 if n % 30 == 7 else 1
        for slot in range(drives):
            held = f"vm-{host_id}" if slot == 4 else None
            devices.append(DeviceView(host_id, "pci", f"0000:{slot + 0x5e:02x}:00.0", "nvme",
                                      *nvme, "enabled", "attached" if held else "ready", held,
                                      False, True, slot, None, None))
    snapshot = Snapshot.build(hosts, devices, [])
    request = PlacementRequest("vm-new", 2, 1024,
                               pools=(PoolAsk("nvme", PoolMatch(*nvme), 3),))
    judged = []
    judge = scheduler._Judge.__call__

    def counting(self, host):
        judged.append(host.id)
        return judge(self, host)

    with mock.patch.object(scheduler._Judge, "__call__", counting):
        quick = choose(request, snapshot, Policy())
    assert quick.chosen == place(request, snapshot, Policy()).chosen
    assert quick.chosen.host_id == "h007" and len(quick.chosen.devices) == 3
    assert judged and all(int(host_id[1:]) % 30 == 7 for host_id in judged)
