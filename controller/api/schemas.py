"""Request bodies, validated at the edge (400 naming every problem, nothing changed)."""

from typing import Literal
from urllib.parse import urlsplit

from flask import request
from pydantic import Field, field_validator, model_validator

from hostplane.api import checked
from hostplane.bodies import StrictBody, VmBasics, VmStop  # noqa: F401 (VmStop: the vms API's)
from hostplane.core.ids import (check_device_id, check_host_id, check_name, normalize_pci_address,
                                normalize_usb_id)
from hostplane.core.pci import PCI_TYPES
from hostplane.core.pools import MAX_ASK, PoolMatch
from hostplane.core.scheduler import GpuAsk, PlacementRequest

HEX4 = r"^[0-9a-fA-F]{4}$"


def check_path_ids(bp, name_of="name"):
    """Answer 400 for a malformed id or name in any path of `bp` (after authentication),
    and hand the views the normalised values: a malformed id names nothing, so 404 would
    hide the caller's mistake."""
    checks = {"name": (lambda v: check_name(v, name_of), "invalid_name"),
              "host_id": (check_host_id, "invalid_id"),
              "device_id": (check_device_id, "invalid_id")}

    @bp.before_request
    def _check_path_ids():
        args = request.view_args or {}
        for key, (check, code) in checks.items():
            if key in args:
                args[key] = checked(check, args[key], code=code)


class HostCreate(StrictBody):
    url: str = Field(pattern=r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?/?$",
                     max_length=512)

    @field_validator("url")
    @classmethod
    def _port_in_range(cls, value):
        try:
            port = urlsplit(value).port   # ValueError past 65535
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("the port must be 1-65535")
        return value
    # Sent to the agent as an HTTP header: printable ASCII without spaces only.
    token: str = Field(min_length=1, max_length=512, pattern=r"^[!-~]+$")
    cluster: str = "default"

    _cluster = field_validator("cluster")(lambda v: check_name(v))


class HostPatch(StrictBody):
    state: Literal["enabled", "disabled", "maintenance"] | None = None
    iommu_enabled: bool | None = None
    cluster: str | None = None

    _cluster = field_validator("cluster")(lambda v: v if v is None else check_name(v))


class DevicePatch(StrictBody):
    state: Literal["enabled", "disabled"] | None = None
    name: str | None = Field(default=None, min_length=1, max_length=255)
    shared: bool | None = None


class GpuBody(StrictBody):
    id: str | None = None
    vendor_id: str | None = Field(default=None, pattern=HEX4)
    device_id: str | None = Field(default=None, pattern=HEX4)
    count: int = Field(default=1, ge=1, le=64)

    _id = field_validator("id")(lambda v: v and normalize_pci_address(v))

    @model_validator(mode="after")
    def _one_form(self):
        by_model = self.vendor_id is not None or self.device_id is not None
        if (self.id is None) == (not by_model) or (by_model and None in (self.vendor_id,
                                                                          self.device_id)):
            raise ValueError("name a GPU by id, or by vendor_id and device_id (with count)")
        if self.id is not None and self.count != 1:
            raise ValueError("count goes with vendor_id/device_id, not with id")
        return self

    def ask(self):
        if self.id:
            return GpuAsk(id=self.id)
        return GpuAsk(vendor_id=self.vendor_id.lower(), device_id=self.device_id.lower(),
                      count=self.count)


class UsbBody(StrictBody):
    id: str

    _id = field_validator("id")(lambda v: normalize_usb_id(v))


class PoolAskBody(StrictBody):
    """`count` devices of a device pool (any PCI kind)."""
    pool: str
    count: int = Field(default=1, ge=1, le=MAX_ASK, strict=True)

    _pool = field_validator("pool")(lambda v: check_name(v, "pool name"))


class DeviceAsks(StrictBody):
    gpus: list[GpuBody] = Field(default_factory=list, max_length=16)
    usb: list[UsbBody] = Field(default_factory=list, max_length=16)
    devices: list[PoolAskBody] = Field(default_factory=list, max_length=16)


class _PoolMatchFields(StrictBody):
    """A pool's match: vendor_id and device_id, then optional narrowing fields."""
    subsystem_vendor_id: str | None = Field(default=None, pattern=HEX4)
    subsystem_device_id: str | None = Field(default=None, pattern=HEX4)
    type: Literal[PCI_TYPES] | None = None   # the agent's PCI types (pools are PCI only)
    vf_of: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$",
                              description="a virtual function's PF model, vendor:device")


class DevicePoolCreate(_PoolMatchFields):
    name: str
    vendor_id: str = Field(pattern=HEX4)
    device_id: str = Field(pattern=HEX4)

    _name = field_validator("name")(lambda v: check_name(v, "pool name"))

    def match(self):
        return PoolMatch.parse(self.model_dump())


class DevicePoolPatch(_PoolMatchFields):
    """New values for the match's fields; an optional field sent as null is cleared."""
    vendor_id: str | None = Field(default=None, pattern=HEX4)
    device_id: str | None = Field(default=None, pattern=HEX4)

    def match(self, current):
        return PoolMatch.parse({**current.as_dict(), **self.model_dump(exclude_unset=True)})


class DevicePoolShare(StrictBody):
    max_count: int = Field(ge=0, le=1_000_000, strict=True, description="devices of the pool the "
                           "tenant's VMs may hold at once")


class VmCreate(VmBasics, DeviceAsks):
    host: str | None = Field(default=None, min_length=1, max_length=128)
    cluster: str | None = None
    anti_affinity_group: str | None = None
    anti_affinity: Literal["enforced", "soft"] = "enforced"
    strategy: Literal["least-cpu", "least-memory"] | None = Field(
        default=None, description="how hosts are ranked; absent: the controller's "
                                  "[scheduler] strategy")
    numa: Literal["required", "preferred", "none"] = "none"
    locality: Literal["same-switch", "same-numa", "any"] = "any"
    locality_mode: Literal["required", "preferred"] = "preferred"
    start: bool = True

    _names = field_validator("cluster", "anti_affinity_group")(
        lambda v: v if v is None else check_name(v))

    def placement(self, tenant, default_strategy, pools=()):
        """The scheduler's request; without a strategy of its own, the configured one.
        `pools`: the PoolAsks of `devices`, their pools looked up (controller.pools)."""
        return PlacementRequest(
            name=self.name, vcpus=self.vcpus, memory_mib=self.memory_mib,
            gpus=[gpu.ask() for gpu in self.gpus], usb=[usb.id for usb in self.usb],
            host=self.host, cluster=self.cluster,
            anti_affinity_group=self.anti_affinity_group, anti_affinity=self.anti_affinity,
            strategy=self.strategy or default_strategy, tenant=tenant, numa=self.numa,
            locality=self.locality, locality_mode=self.locality_mode, pools=pools)


class VmDevicesAdd(DeviceAsks):
    """Either `{"type", "id"}` (one device, as on the agent) or `{"gpus", "usb"}`."""
    type: Literal["pci", "usb"] | None = None
    id: str | None = None

    @model_validator(mode="after")
    def _one_form(self):
        if (self.type is None) != (self.id is None):
            raise ValueError("type and id go together")
        if self.type == "pci":
            self.gpus.append(GpuBody(id=self.id))
        elif self.type == "usb":
            self.usb.append(UsbBody(id=self.id))
        if not self.gpus and not self.usb and not self.devices:
            raise ValueError("name at least one device: {type, id}, gpus, usb or devices")
        return self

