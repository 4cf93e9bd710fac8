"""A resync compares what the controller knows with what the agent now reports."""

from types import SimpleNamespace

from hostplane.core.reconcile import reconcile
from tests.hosts import small_gpu_host
from tests.test_scheduler import pci_models


def known_rows(reported, **changes):
    """The controller's rows after an earlier sync; changes: {id: {attribute: value}}."""
    rows = {}
    for device_id, d in reported.items():
        fields = dict(id=device_id, kind="pci", vendor_id=d["vendor_id"],
                      product_id=d["device_id"], status="ready", vm=None, type=d["type"],
                      iommu_group=d["iommu_group"])
        rows[device_id] = SimpleNamespace(**{**fields, **changes.get(device_id, {})})
    return rows


def test_nothing_changed_reports_nothing():
    reported = pci_models(small_gpu_host())
    result = reconcile(known_rows(reported), reported)
    assert result.added == result.vanished == result.moved == []


def test_vanished_attached_gpu_is_listed_to_become_unavailable_not_freed():
    reported = pci_models(small_gpu_host())
    known = known_rows(reported, **{"0000:3b:00.0": {"status": "attached", "vm": "vm-7"}})
    del reported["0000:3b:00.0"]
    result = reconcile(known, reported)
    assert result.vanished == ["0000:3b:00.0"]
    assert result.unavailable == ["0000:3b:00.0"]
    assert known["0000:3b:00.0"].vm == "vm-7"   # reconcile only reports; the row is untouched


def test_address_now_holding_another_device_is_moved():
    reported = pci_models(small_gpu_host())
    known = known_rows(reported)
    reported["0000:3b:00.0"] = dict(reported["0000:3b:00.0"], device_id="2204")
    result = reconcile(known, reported)
    assert result.moved == ["0000:3b:00.0"]


def test_new_devices_are_added_and_returning_ones_are_not_new():
    reported = pci_models(small_gpu_host())
    known = known_rows(reported, **{"0000:af:00.0": {"status": "unavailable"}})
    del known["0000:5e:00.0"]
    result = reconcile(known, reported)
    assert result.added == ["0000:5e:00.0"]
    assert result.vanished == result.moved == []


def test_usb_devices_are_matched_by_vendor_and_product():
    known = {"0781:5567:S1": SimpleNamespace(id="0781:5567:S1", kind="usb", vendor_id="0781",
                                             product_id="5567", status="ready", vm=None)}
    same = {"0781:5567:S1": {"id": "0781:5567:S1", "vendor_id": "0781", "product_id": "5567",
                             "attached_to": None}}
    assert reconcile(known, same).moved == []
    other = {"0781:5567:S1": dict(same["0781:5567:S1"], product_id="5581")}
    assert reconcile(known, other).moved == ["0781:5567:S1"]
