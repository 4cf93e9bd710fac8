"""Which devices of one host a request would claim, or why that host cannot give them.

A VM only takes devices of its own host. A GPU is claimed with every other function of its
IOMMU group (its gpu-audio function, or a second GPU behind the same bridge), since VFIO hands
a group to one VM or to none. Tenants see only devices an admin shared, and never USB.
"""

from dataclasses import dataclass
from functools import partial

from hostplane.core.placement_index import device_blocker
from hostplane.core.placement_locality import no_gpu_model, no_pci_device
from hostplane.core.placement_pools import no_pool_device, pool_devices, pool_shortfall
from hostplane.core.reasons import Reason
from hostplane.core.usb import limit_class


def pick_pci(asks, host_id, index, shared_only, allowed=None, pools=(), offered=None):
    """((("pci", id), ...), reasons) for the GPU asks on this host, asks by id first,
    then the asks by count (GPU models, then pools; a pool shared with a tenant needs no
    per-device share), these only among the `allowed` ids when given (one switch or node).
    `offered`: what `offers` gives for this host, when the caller has it already."""
    taken = {}        # id → ("pci", id), in claim order: asked devices and group siblings
    counted = set()   # ids that satisfied an ask
    reasons = []
    for ask in asks:
        if ask.id is not None:
            _pick_by_id(ask.id, host_id, index, shared_only, taken, counted, reasons)
    if offered is None:
        offered = offers(asks, pools, host_id, index, shared_only)
    for offer in offered:
        devices = offer.devices
        if allowed is not None:
            devices = [device for device in devices if device.id in allowed]
        _pick_some(devices, offer.count, host_id, index, taken, counted, reasons, offer.none,
                   offer.shortfall)
    return tuple(taken.values()), reasons


@dataclass(frozen=True, slots=True)
class Offer:
    """The devices of one host an ask by count may take (claimable first), and the
    sentences for none here and for too few."""
    devices: list
    count: int
    none: Reason
    shortfall: object   # got → Reason
    title: str          # "10de:20b5", "of pool a100": what explain says was offered


def offers(asks, pools, host_id, index, shared_only):
    """An Offer per ask by count (GPU model, then pool) on this host: one code path for
    both, read once per host however many scopes locality tries."""
    found = []
    for ask in asks:
        if ask.id is None:
            gpus = index.gpu_models.get((ask.vendor_id, ask.device_id), {}).get(host_id, ())
            if shared_only:
                gpus = [gpu for gpu in gpus if gpu.shared]
            plural = "GPU" if ask.count == 1 else "GPUs"
            found.append(Offer(gpus, ask.count, no_gpu_model(ask), partial(
                _gpu_shortfall, ask, plural), f"{ask.vendor_id}:{ask.device_id}"))
    for ask in pools:
        found.append(Offer(pool_devices(ask, host_id, index), ask.count, no_pool_device(ask),
                           partial(pool_shortfall, ask), f"of pool {ask.pool}"))
    return found


def _gpu_shortfall(ask, plural, got):
    return Reason(f"only {got} of {ask.count} {plural} {ask.vendor_id}:{ask.device_id} free",
                  "not_enough_gpus")


def by_id_first(asks):
    return tuple(sorted(asks, key=lambda ask: ask.id is None))


def one_gpu_shortcut(asks, index, shared_only):
    """For the common ask "one GPU of a model" (admin): {host_id: [gpus]}, else None.

    GPUs are sorted claimable first, so a host's first GPU, when claimable, is the answer
    `pick_pci` would give; only hosts where it is not need the full walk (and its reasons).
    """
    if len(asks) == 1 and asks[0].id is None and asks[0].count == 1 and not shared_only:
        return index.gpu_models.get((asks[0].vendor_id, asks[0].device_id), {})
    return None


def first_free_gpu(shortcut, host_id, index):
    gpus = shortcut.get(host_id)
    if gpus and (host_id, gpus[0].id) not in index.blockers:
        return index.claims[(host_id, gpus[0].id)]
    return None


def _pick_by_id(device_id, host_id, index, shared_only, taken, counted, reasons):
    device = index.device(host_id, "pci", device_id)
    if device is None or (shared_only and not device.shared):
        reasons.append(no_pci_device(device_id))
        return
    if device_id in counted:
        reasons.append(Reason(f"PCI device {device_id} asked twice", "device_asked_twice"))
        return
    if device_id not in taken:
        blocker = index.blockers.get((host_id, device_id))
        if blocker:
            reasons.append(blocker)
            return
        _take(index.claims[(host_id, device_id)], taken)
    counted.add(device_id)


def _pick_some(devices, count, host_id, index, taken, counted, reasons, none, shortfall):
    """Take `count` of `devices`, each with its IOMMU group; else say why: `none` when
    there are none here, else the blockers met and `shortfall(got)`."""
    if not devices:
        reasons.append(none)
        return
    got, blocked = 0, []
    for device in devices:
        if got == count:
            break
        if device.id in counted:
            continue
        if device.id not in taken:
            blocker = index.blockers.get((host_id, device.id))
            if blocker:
                blocked.append(blocker)
                continue
            _take(index.claims[(host_id, device.id)], taken)
        counted.add(device.id)
        got += 1
    if got < count:
        reasons.extend(blocked)
        reasons.append(shortfall(got))


def _take(claim, taken):
    for key in claim:
        taken[key[1]] = key


def pick_usb(usb_ids, host_id, index):
    """((("usb", id), ...), reasons) on a host holding every asked USB device (see Locality)."""
    claims, reasons = [], []
    for usb_id in usb_ids:
        device = index.device(host_id, "usb", usb_id)
        if device is None:
            continue   # Locality already rejected this host
        blocker = device_blocker(device)
        if blocker:
            reasons.append(blocker)
        else:
            claims.append(("usb", usb_id))
    return tuple(claims), reasons


def usb_global_reasons(request, index):
    """Reasons that reject every host alike: USB is admin-only, per-VM limits."""
    if not request.usb:
        return []
    reasons = []
    if request.tenant is not None:
        reasons.append(Reason("USB devices are admin-only", "usb_admin_only"))
    counts = {}   # (major, limit) → devices of that class the VM would hold
    for usb_id in dict.fromkeys(request.usb):
        hosts = index.usb_hosts(usb_id)
        if not hosts:
            continue   # "not found on any host" comes from Locality
        usb_class = limit_class(index.device(hosts[0], "usb", usb_id).usb_major)
        counts[usb_class] = counts.get(usb_class, 0) + 1
    if request.existing_vm is not None:
        for device in index.held.get(request.existing_vm.name, ()):
            if device.kind == "usb" and device.id not in request.usb:
                usb_class = limit_class(device.usb_major)
                counts[usb_class] = counts.get(usb_class, 0) + 1
    for (major, limit), count in sorted(counts.items()):
        if count > limit:
            reasons.append(Reason(f"USB {major}.x limit: {count} for this VM, at most {limit}",
                                  "usb_limit"))
    return reasons
