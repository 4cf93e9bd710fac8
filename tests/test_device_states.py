"""The device state machine refuses every move a racing or stale caller could attempt."""

from types import SimpleNamespace

import pytest

from hostplane.core.device_states import (IllegalTransition, can_delete, claim, disable, enable,
                                          mark_unavailable, release)


def device(status="ready", vm=None, state="enabled"):
    """Stands in for a controller row: the functions only touch these four attributes."""
    return SimpleNamespace(id="0000:3b:00.0", status=status, vm=vm, state=state)


def test_claim_then_release_round_trip():
    gpu = device()
    claim(gpu, "vm-1")
    assert (gpu.status, gpu.vm) == ("attached", "vm-1")
    release(gpu, "vm-1")
    assert (gpu.status, gpu.vm) == ("ready", None)


def test_second_claim_is_refused_naming_holder_and_expected_status():
    gpu = device()
    claim(gpu, "vm-1")
    with pytest.raises(IllegalTransition) as raised:
        claim(gpu, "vm-2")
    error = raised.value
    assert (error.device_id, error.status, error.expected) == ("0000:3b:00.0", "attached",
                                                               ("ready",))
    assert str(error) == "device 0000:3b:00.0 is attached, expected ready"
    assert gpu.vm == "vm-1"


def test_disabled_device_cannot_be_claimed():
    gpu = device(state="disabled")
    with pytest.raises(IllegalTransition, match="disabled by admin"):
        claim(gpu, "vm-1")
    assert (gpu.status, gpu.vm) == ("ready", None)


def test_release_by_another_vm_is_refused():
    gpu = device(status="attached", vm="vm-1")
    with pytest.raises(IllegalTransition, match="held by vm-1, not vm-2"):
        release(gpu, "vm-2")
    assert gpu.vm == "vm-1"
    with pytest.raises(IllegalTransition, match="is ready, expected attached"):
        release(device(), "vm-1")


def test_unavailable_keeps_the_holder_and_only_then_may_be_deleted():
    gpu = device(status="attached", vm="vm-1")
    assert not can_delete(gpu)
    mark_unavailable(gpu)
    assert (gpu.status, gpu.vm) == ("unavailable", "vm-1")
    assert can_delete(gpu)
    with pytest.raises(IllegalTransition, match="is unavailable, expected ready"):
        claim(gpu, "vm-2")


def test_disable_leaves_an_attached_device_with_its_vm():
    gpu = device(status="attached", vm="vm-1")
    disable(gpu)
    assert (gpu.state, gpu.status, gpu.vm) == ("disabled", "attached", "vm-1")
    release(gpu, "vm-1")
    with pytest.raises(IllegalTransition):
        claim(gpu, "vm-2")
    enable(gpu)
    claim(gpu, "vm-2")
    assert gpu.vm == "vm-2"


def test_unassignable_device_is_never_ready_and_cannot_be_claimed():
    from hostplane.core.device_states import settle_assignability, start_free
    bridge = SimpleNamespace(id="0000:00:01.0", status=None, vm=None, state="enabled",
                             assignable=False)
    start_free(bridge)
    assert bridge.status == "not_assignable"
    with pytest.raises(IllegalTransition, match="is not_assignable, expected ready"):
        claim(bridge, "vm-1")
    bridge.assignable = True             # e.g. the root filesystem was moved off it
    settle_assignability(bridge)
    assert bridge.status == "ready"


def test_release_of_a_device_that_became_unassignable_leaves_it_not_assignable():
    disk = SimpleNamespace(id="0000:5e:00.0", status="ready", vm=None, state="enabled",
                           assignable=True)
    claim(disk, "vm-1")
    disk.assignable = False
    from hostplane.core.device_states import settle_assignability
    settle_assignability(disk)
    assert disk.status == "attached", "a VM's device stays its own"
    release(disk, "vm-1")
    assert (disk.status, disk.vm) == ("not_assignable", None)


def test_unavailable_device_comes_back_to_its_vm_or_free():
    from hostplane.core.device_states import come_back, hold
    gone = device(status="unavailable", vm="vm-1")
    come_back(gone)
    assert gone.status == "attached"
    free = device(status="unavailable")
    come_back(free)
    assert free.status == "ready"
    hold(free, "vm-2")
    assert (free.status, free.vm) == ("attached", "vm-2")
    with pytest.raises(IllegalTransition):
        hold(free, "vm-3")
