"""Lab tests boot real QEMU nodes (minutes under TCG): run them only on
request, with `pytest -m lab tests/lab` or HOSTPLANE_LAB=1."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "lab: end-to-end tests on emulated compute nodes")
    # test_lab_boot uses pytest-timeout's marker; quiet when it's absent.
    config.addinivalue_line("markers", "timeout(seconds): test time limit")


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("-m") or ""
    wanted = ("lab" in markexpr and "not lab" not in markexpr) \
        or os.environ.get("HOSTPLANE_LAB")
    if wanted:
        return
    skip = pytest.mark.skip(reason="lab test: run with -m lab or HOSTPLANE_LAB=1")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)
