"""Why a host refuses a placement: a sentence for people, a stable code for programs.

A `Reason` is the sentence itself (a `str`, so every caller that joins, prints or serialises
reasons keeps working) carrying a `code` from `CODES`. Metrics, the CLI's `--code` filter and
API clients read the code; the sentence may change wording, the code does not.
"""

CODES = {
    # the host itself
    "host_not_connected": "the host is still connecting or disconnected",
    "host_disabled": "an admin disabled the host",
    "host_maintenance": "the host is in maintenance",
    "iommu_off": "an admin switched the host's IOMMU off, so it takes no GPU",
    "iommu_not_ready": "the host's kernel IOMMU is not on and ready, so it takes no GPU",
    # capacity and policy
    "not_enough_cpu": "fewer vCPUs free (after overcommit) than asked",
    "not_enough_memory": "less memory free (after overcommit) than asked",
    "strategy_limit": "the enforced strategy's resource would go over its limit",
    "anti_affinity": "a VM of the same enforced anti-affinity group runs there",
    # what the request named
    "not_requested_host": "the request named another host",
    "not_in_cluster": "the request named another cluster",
    "vm_pinned": "the existing VM stays on its host (running, holding devices, or defined)",
    # devices
    "no_such_device": "the asked PCI device is not on this host (or not shared with you)",
    "no_gpu_model": "no GPU of the asked model on this host (or none shared with you)",
    "device_asked_twice": "the same PCI device is asked twice",
    "not_enough_gpus": "fewer free GPUs of the asked model than asked",
    "no_pool_device": "no device of the asked pool on this host (or the pool is not yours)",
    "not_enough_pool_devices": "fewer free devices of the asked pool than asked",
    "device_attached": "the device is attached to a VM",
    "device_unavailable": "the device vanished from its host",
    "device_disabled": "an admin disabled the device",
    "device_not_assignable": "the device cannot be passed through (host-critical, bridge, ...)",
    "device_busy": "the device is in a transient status other than ready",
    "iommu_group_not_viable": "another function of the device's IOMMU group is taken or held",
    "usb_elsewhere": "the asked USB device is on another host",
    "usb_not_found": "the asked USB device is on no host",
    "usb_admin_only": "USB passthrough is for admins only",
    "usb_limit": "more USB devices of one version than a VM may take",
    # NUMA and PCIe locality (required policies)
    "locality_switch": "not enough free devices of the ask under one PCIe switch",
    "locality_numa": "not enough free devices of the ask on one NUMA node",
    "numa_unknown": "the host's agent has not reported its NUMA nodes",
    "numa_split": "the asked devices sit on more than one NUMA node",
    "numa_no_room": "no NUMA node has the vCPUs and memory left for the VM",
    "numa_other_node": "the VM is pinned to a NUMA node where no asked device is free",
}


class Reason(str):
    """A refusal sentence with its code: `Reason("not enough memory: ...", "not_enough_memory")`.

    Each code has its own subclass carrying `code` as a class attribute, so a reason costs
    what its string costs (placements over ten thousand hosts build many)."""

    __slots__ = ()
    code = None

    def __new__(cls, message, code):
        try:
            kind = _KINDS[code]
        except KeyError:
            raise ValueError(f"unknown reason code {code!r}") from None
        return str.__new__(kind, message)

    def __reduce__(self):
        return Reason, (str(self), self.code)

    def reworded(self, message):
        """The same code with another sentence (a tenant's redacted view)."""
        return Reason(message, self.code)


_KINDS = {code: type(f"Reason[{code}]", (Reason,), {"__slots__": (), "code": code})
          for code in CODES}


def code_of(reason):
    """The code of a reason; a plain sentence (an old caller) is `other`."""
    return getattr(reason, "code", "other")


def as_records(reasons):
    """[{"code", "message"}] as the API answers them."""
    return [{"code": code_of(reason), "message": str(reason)} for reason in reasons]
