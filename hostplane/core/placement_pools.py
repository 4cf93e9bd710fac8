"""Pool asks in placement: `{"pool": "a100", "count": 4}` for any kind of PCI device.

The controller resolves a pool's name to its match before placing (unknown: 404), so the
scheduler sees the match itself and a pool defined or changed after the snapshot was
built needs no rebuild. Devices are found through the snapshot's index by model
(vendor:device), then filtered by the rest of the match; taking them, with the other
functions of their IOMMU groups, is `placement_devices`' work, as for GPUs.
"""

from dataclasses import dataclass

from hostplane.core.pools import PoolMatch, check_count, model_of
from hostplane.core.reasons import Reason


@dataclass(frozen=True, slots=True)
class PoolAsk:
    """`count` devices of the pool `pool`, whose match the controller looked up."""
    pool: str
    match: PoolMatch
    count: int = 1

    def __post_init__(self):
        check_count(self.count)


def no_pool_device(ask):
    return Reason(f"no device of pool {ask.pool} on this host", "no_pool_device")


def pool_shortfall(ask, got):
    return Reason(f"only {got} of {ask.count} devices of pool {ask.pool} free",
                  "not_enough_pool_devices")


def pf_model(index, device):
    """The model of a virtual function's PF on the same host ("8086:1593"), else None."""
    if device.physfn is None:
        return None
    pf = index.device(device.host_id, "pci", device.physfn)
    return model_of(pf) if pf is not None else None


def pool_devices(ask, host_id, index):
    """The host's devices of the pool, claimable first and smallest IOMMU group first."""
    return matching_devices(ask.match, host_id, index)


def matching_devices(match, host_id, index):
    devices = index.pci_models.get(match.model, {}).get(host_id, ())
    if _by_model_only(match):
        return devices
    return [device for device in devices if match.fits(device, pf_model(index, device))]


def pool_hosts(ask, index):
    """Hosts holding at least one device of the pool (for Locality). A match beyond the
    model is worked out once per snapshot, on its first ask, and then kept host by host
    by the index (`SnapshotIndex.pool_holders`): one pass over the model's hosts costs
    milliseconds at 100,000 hosts."""
    holders = index.pci_models.get(ask.match.model, {})
    if _by_model_only(ask.match):
        return holders
    found = index.pool_holders.get(ask.match)
    if found is None:
        found = {host_id for host_id in holders if matching_devices(ask.match, host_id, index)}
        index.pool_holders[ask.match] = found   # whole, in one step: readers may share it
    return found


def one_pool_shortcut(request, index):
    """For the ask "one device of a pool matched by model" alone: {host_id: [devices]}
    sorted claimable first (as `first_free_gpu` reads it), else None."""
    if request.gpus or len(request.pools) != 1:
        return None
    ask = request.pools[0]
    if ask.count != 1 or not _by_model_only(ask.match):
        return None
    return index.pci_models.get(ask.match.model, {})


def _by_model_only(match):
    return (match.subsystem_vendor_id is None and match.subsystem_device_id is None
            and match.type is None and match.vf_of is None)
