"""Device pools: named kinds of PCI device that VMs ask for by count, not by address.

A pool is a match on what the inventory reports of a function: its `vendor_id` and
`device_id` (always), optionally its subsystem ids and `type`, and for a virtual function
the model of its PF (`vf_of`, "8086:1593"). A device belongs to at most one pool: two
matches that could ever both take one device (every field they both set is equal) are
refused, so `pool_of` never has to choose. Devices are read through their attributes
(`vendor_id`, `product_id`, `subsystem_vendor_id`, `subsystem_device_id`, `type`,
`physfn`, `kind`, `state`, `status`), which the scheduler's views and the controller's rows
both carry; the PF's model comes from a lookup the caller provides.
"""

import re
from dataclasses import dataclass

from hostplane.core.ids import InvalidId, check_name

HEX4 = re.compile(r"^[0-9a-f]{4}$")
MODEL = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
DEVICE_TYPE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
MAX_ASK = 64   # devices of one pool in one ask
OPTIONAL_FIELDS = ("subsystem_vendor_id", "subsystem_device_id", "type", "vf_of")
FIELDS = ("vendor_id", "device_id") + OPTIONAL_FIELDS


@dataclass(frozen=True, slots=True)
class PoolMatch:
    """What a device must show to be in the pool; None fields match anything."""
    vendor_id: str
    device_id: str
    subsystem_vendor_id: str | None = None
    subsystem_device_id: str | None = None
    type: str | None = None
    vf_of: str | None = None

    @classmethod
    def parse(cls, fields):
        """A match from API fields (lower-cased, checked), or InvalidId naming the field."""
        values = {}
        for name in FIELDS:
            value = fields.get(name)
            if value is None:
                if name in ("vendor_id", "device_id"):
                    raise InvalidId(f"a pool match needs {name} (4 hex digits)")
                continue
            value = str(value).strip().lower()
            pattern, shape = ((MODEL, "a PF model like 8086:1593") if name == "vf_of" else
                              (DEVICE_TYPE, "a device type like gpu or nvme") if name == "type"
                              else (HEX4, "4 hex digits"))
            if not pattern.fullmatch(value):
                raise InvalidId(f"{name} {str(fields.get(name))[:40]!r} must be {shape}")
            values[name] = value
        return cls(**values)

    @property
    def model(self):
        """(vendor_id, device_id): the key the scheduler's index finds devices by."""
        return (self.vendor_id, self.device_id)

    def fits(self, device, pf_model=None):
        """Does this PCI `device` belong here? `pf_model`: its PF's "vvvv:dddd" or None."""
        return (device.kind == "pci" and device.vendor_id == self.vendor_id
                and device.product_id == self.device_id
                and self.subsystem_vendor_id in (None, device.subsystem_vendor_id)
                and self.subsystem_device_id in (None, device.subsystem_device_id)
                and self.type in (None, device.type)
                and (self.vf_of is None or (device.physfn is not None
                                            and pf_model == self.vf_of)))

    def may_overlap(self, other):
        """Could one device ever fit both? Yes when every field both set is equal."""
        return all(getattr(self, name) is None or getattr(other, name) is None
                   or getattr(self, name) == getattr(other, name) for name in FIELDS)

    def as_dict(self):
        return {name: getattr(self, name) for name in FIELDS}


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    match: PoolMatch


def check_pool_name(text):
    return check_name(text, "pool name")


def check_count(count):
    """Devices of one pool in one ask: 1 to 64."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_ASK:
        raise InvalidId(f"count must be 1 to {MAX_ASK}")
    return count


def model_of(device):
    """"vvvv:dddd" of a device (how `vf_of` names a PF)."""
    return f"{device.vendor_id}:{device.product_id}"


def pool_of(pools, device, pf_model=None):
    """The name of the pool `device` belongs to, or None (pools never overlap)."""
    for pool in pools:
        if pool.match.fits(device, pf_model):
            return pool.name
    return None


def overlapping(match, pools):
    """The existing pools a new `match` could share a device with."""
    return [pool for pool in pools if match.may_overlap(pool.match)]


def shared_devices(match, pool, devices, pf_model_of):
    """Known devices both `match` and `pool` would take: ["host/address", ...]."""
    return [f"{device.host_id}/{device.id}" for device in devices
            if match.fits(device, pf_model_of(device)) and
            pool.match.fits(device, pf_model_of(device))]


def device_standing(device, host_usable=True):
    """free, attached or unavailable: how a pool counts one of its devices. A ready device
    on a host that takes no placement (disconnected, disabled, IOMMU off) is unavailable."""
    if device.status == "attached":
        return "attached"
    if device.status == "ready" and device.state == "enabled" and host_usable:
        return "free"
    return "unavailable"


def pool_counts(devices, unusable_hosts=frozenset()):
    """{"size", "free", "attached", "unavailable", "hosts": {host id: the same four}}."""
    totals = _zero()
    hosts = {}
    for device in devices:
        standing = device_standing(device, device.host_id not in unusable_hosts)
        per_host = hosts.setdefault(device.host_id, _zero())
        for counts in (totals, per_host):
            counts["size"] += 1
            counts[standing] += 1
    return {**totals, "hosts": dict(sorted(hosts.items()))}


def quota_refusal(pool, used, adding, limit):
    """None when `adding` more devices keeps a tenant within `limit`, else the details
    of the 403 (`quota_exceeded`)."""
    if used + adding <= limit:
        return None
    return {"pool": pool, "used": used, "asked": adding, "limit": limit}


def _zero():
    return {"size": 0, "free": 0, "attached": 0, "unavailable": 0}
