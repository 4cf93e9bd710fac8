"""The agent's attach check and the controller's placement apply one USB limit rule.

Both call `hostplane.core.usb.limit_class`; this walks versions a device may report (and
ones it may not) through both and insists they refuse at the same count, so the controller
never claims a device the agent then refuses.
"""

import dataclasses

import pytest

from agent.virt import rules
from hostplane.core.scheduler import Snapshot, place
from hostplane.core.usb import limit_class, version_major
from hostplane.errors import Conflict
from tests.test_scheduler_devices import STICK, two_hosts
from tests.test_scheduler import request

VERSIONS = ["1.10", "2.00", "3.20", None, "", "4.00", "bogus"]


def agent_accepts(version, count):
    """How many of `count` devices of `version` the agent's rules let one VM hold."""
    held = []
    for n in range(count):
        device = {"id": f"0951:1666:K{n}", "usb_version": version, "is_hub": False}
        try:
            rules.check_usb(device, "vm-1", {}, held)
        except Conflict as refusal:
            assert refusal.code == "usb_limit_reached"
            return len(held)
        held.append(version)
    return len(held)


def scheduler_accepts(version, count):
    """The largest number of `count` such devices placement lets one VM claim."""
    base = two_hosts()
    template = next(d for d in base.devices if d.id == STICK)
    extra = [dataclasses.replace(template, id=f"0951:1666:K{n}", usb_major=version_major(version))
             for n in range(count)]
    snapshot = Snapshot.build(base.hosts, base.devices + tuple(extra), ())
    ids = [d.id for d in extra]
    return max(n for n in range(count + 1)
               if n == 0 or place(request(usb=ids[:n]), snapshot).chosen is not None)


@pytest.mark.parametrize("version", VERSIONS)
def test_agent_and_scheduler_refuse_at_the_same_count(version):
    _, limit = limit_class(version)
    assert agent_accepts(version, limit + 1) == limit
    assert scheduler_accepts(version, limit + 1) == limit


def test_unknown_versions_count_as_usb_2():
    assert [limit_class(v) for v in VERSIONS] == [(1, 1), (2, 6), (3, 4), (2, 6), (2, 6),
                                                  (2, 6), (2, 6)]
    assert limit_class(3) == (3, 4)   # the controller keeps the major version only
