"""The inventory command's indented JSON is exactly what `json.dumps(indent=2)` writes."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from hostplane.core.jsontext import indented_json

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.tuples(inner, inner)
                      | st.dictionaries(st.text(), inner, max_size=4), max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(VALUES)
def test_indented_json_is_json_dumps_indent_2_byte_for_byte(value):
    assert indented_json(value) == json.dumps(value, indent=2)


def test_an_inventory_sized_document_reads_back_the_same():
    device = {"id": "0000:3b:00.0", "vendor_name": "NVIDIA Corporation \u00e9", "numa_node": 0,
              "upstream": [], "link": {"current_width": 16, "max_speed": "32.0 GT/s PCIe"},
              "sriov": None, "assignable": True, "iommu_group_devices": ["0000:3b:00.0"]}
    document = {"host_id": "h", "generation": 3, "pci": [device] * 50, "usb": [], "errors": []}
    assert indented_json(document) == json.dumps(document, indent=2)
    assert json.loads(indented_json(document)) == document
