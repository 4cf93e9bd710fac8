"""USB device attributes (as sysfs or udev present them) → the inventory model."""

from hostplane.core.ids import usb_id

HUB_CLASS = "09"
# Per-VM limits by USB major version (ZStack's rule): 1 × 1.x, 6 × 2.x, 4 × 3.x.
PER_VM_LIMITS = {1: 1, 2: 6, 3: 4}
UNKNOWN_VERSION_CLASS = 2


def usb_version(text):
    """The kernel's `version` attribute (bcdUSB as " 2.10") → "2.10"; None if malformed."""
    text = (text or "").strip()
    major, dot, minor = text.partition(".")
    if not dot or not major.isdigit() or len(minor) != 2 or not minor.isalnum():
        return None
    return f"{int(major)}.{minor}"


def version_major(version):
    """"2.10" → 2; limits and guest controllers are chosen by the major version."""
    try:
        return int(str(version).split(".", 1)[0])
    except (TypeError, ValueError):
        return None


def limit_class(version):
    """(class, per-VM limit) for a device whose version is "2.10", 2 or None.

    The one rule the agent's attach check and the controller's placement both apply: the
    class is the major version; a device that reports no version, or one outside 1-3,
    counts as USB 2 (what every port speaks), so it is always under a limit and the
    controller never claims what the agent would then refuse.
    """
    major = version_major(version)
    usb_class = major if major in PER_VM_LIMITS else UNKNOWN_VERSION_CLASS
    return usb_class, PER_VM_LIMITS[usb_class]


def speed_mbps(text):
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def build_usb_device(sys_name, attrs):
    """Model dict from one `usb_device`; `attrs` maps sysfs attribute names to text."""
    def attr(name):
        value = attrs.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    vendor = (attr("idVendor") or "0000").lower()
    product_id = (attr("idProduct") or "0000").lower()
    serial = attr("serial")
    device_class = (attr("bDeviceClass") or "00").lower()
    root_hub = sys_name.startswith("usb")
    port = sys_name
    is_hub = device_class == HUB_CLASS
    reason = None
    if root_hub:
        reason = "root hub of a USB controller"
    elif is_hub:
        reason = "USB hub: pass the devices behind it through instead"
    return {
        "id": usb_id(vendor, product_id, serial, port),
        "vendor_id": vendor,
        "product_id": product_id,
        "manufacturer": attr("manufacturer"),
        "product": attr("product"),
        "serial": serial,
        "usb_version": usb_version(attr("version")),
        "speed_mbps": speed_mbps(attr("speed")),
        "busnum": _int(attr("busnum")),
        "devnum": _int(attr("devnum")),
        "port": port,
        "device_class": device_class,
        "is_hub": is_hub or root_hub,
        "assignable": reason is None,
        "not_assignable_reason": reason,
        "attached_to": None,
    }


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None
