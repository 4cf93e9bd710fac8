"""A resync keeps every synced field of a device in step with what its agent reports.

Real SQLAlchemy rows on a real SQLite database, written by the poller's own `apply_report`.
"""

import copy

from controller.db import Database, upgrade
from controller.db.models import Device, Host
from controller.sync import apply_report
from hostplane.core.reconcile import SYNCED_FIELDS

GPU = {"id": "0000:3b:00.0", "vendor_id": "10de", "device_id": "1eb8", "type": "gpu",
       "assignable": True, "not_assignable_reason": None, "iommu_group": 11,
       "numa_node": 0, "upstream": ["0000:3a:00.0"], "link": {"speed": "8GT/s", "width": 16},
       "attached_to": None}
CHANGED = {"type": "display", "assignable": False,
           "not_assignable_reason": "carries the host's console", "iommu_group": 12,
           "numa_node": 1, "upstream": ["0000:3a:02.0"], "link": {"speed": "16GT/s", "width": 8}}


def test_every_synced_field_is_a_device_column():
    columns = set(Device.__table__.columns.keys())
    assert [name for name in SYNCED_FIELDS if name not in columns] == []
    assert set(CHANGED) == set(SYNCED_FIELDS)   # this test changes each of them below


def test_a_resync_writes_each_synced_field_the_agent_changed(tmp_path):
    url = f"sqlite:///{tmp_path}/controller.db"
    upgrade(url)
    db = Database(url)
    try:
        with db.write() as session:
            session.add(Host(id="host-a", url="http://127.0.0.1:1", token="t" * 16))
        with db.write() as session:
            apply_report(session, "host-a", {"pci": [GPU]})
        with db.write() as session:
            apply_report(session, "host-a", {"pci": [{**copy.deepcopy(GPU), **CHANGED}]})
        with db.read() as session:
            row = session.get(Device, ("host-a", GPU["id"]))
            assert {name: getattr(row, name) for name in SYNCED_FIELDS} == CHANGED
            assert row.status == "not_assignable"   # no longer assignable: never offered
    finally:
        db.close()
