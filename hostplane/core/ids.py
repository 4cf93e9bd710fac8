"""Identities of devices, VMs and networks, and the checks that guard them at the edge.

A PCI device is named by its full address (`0000:01:00.0`); the domain has 4 to 8 hex
digits (Intel VMD puts drives in `10000:` and up) and a short `01:00.0` means domain
0000. A USB device is named by
what survives a replug: `vid:pid:serial` when it has a serial, else `vid:pid@port` with
the sysfs port path (`1-1.2`). Bus and device numbers change on every replug, so they
are reported but never used as an id.
"""

import re

# A function's name as sysfs writes it (full form only).
PCI_FUNCTION_NAME = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
# Full (`0000:01:00.0`, `10000:e1:00.0`) or short (`01:00.0`) form; normalise before use.
PCI_ADDRESS = re.compile(r"^(?:[0-9a-f]{4,8}:)?[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
USB_ID = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}(?::[A-Za-z0-9._-]{1,126}|@(?:usb[0-9]{1,3}|[0-9]{1,3}-[0-9]{1,3}(?:\.[0-9]{1,3}){0,6}))$")
OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# What an agent may call itself: its configured id or /etc/machine-id (32 hex digits).
HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_SERIAL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class InvalidId(ValueError):
    """An id or name that can never name anything; the edge answers 400."""


def normalize_pci_address(text):
    """Lower-cased full address, or InvalidId; `01:00.0` is domain 0000.

    The domain keeps the width sysfs gives it: four digits, or more only when its value
    needs them (`10000:e1:00.0`), so `00010000:e1:00.0` and `0000:01:00.0` name what the
    kernel names.
    """
    candidate = str(text).strip().lower()
    if not PCI_ADDRESS.fullmatch(candidate):
        raise InvalidId(f"{str(text)[:80]!r} is not a PCI address like 0000:01:00.0 "
                        "(domain of 4 to 8 hex digits)")
    parts = candidate.split(":")
    if len(parts) == 2:   # short form: bus:slot.function
        return "0000:" + candidate
    return f"{int(parts[0], 16):04x}:{parts[1]}:{parts[2]}"


def usb_id(vendor_id, product_id, serial=None, port=None):
    """The stable id of a USB device; serials are folded to URL-safe characters."""
    vendor_id, product_id = vendor_id.lower(), product_id.lower()
    serial = (serial or "").strip()
    if serial:
        return f"{vendor_id}:{product_id}:{_SERIAL_UNSAFE.sub('_', serial)[:126]}"
    return f"{vendor_id}:{product_id}@{port}"


def normalize_usb_id(text):
    candidate = str(text).strip()
    head, sep, tail = candidate[:9].lower(), candidate[9:10], candidate[10:]
    candidate = head + sep + tail
    if not USB_ID.fullmatch(candidate):
        raise InvalidId(f"{text!r} is not a USB id like 046d:c52b:SERIAL or 046d:c52b@1-1.2")
    return candidate


def check_name(text, what="name"):
    """VM, network and group names: 1-63 of [A-Za-z0-9_.-], starting alphanumeric."""
    if not isinstance(text, str) or not OBJECT_NAME.fullmatch(text):
        raise InvalidId(f"{what} {str(text)[:80]!r} must be 1-63 letters, digits, '_', '.' "
                        "or '-', starting with a letter or digit")
    return text


def check_host_id(text):
    if not isinstance(text, str) or not HOST_ID.fullmatch(text):
        raise InvalidId(f"host id {str(text)[:80]!r} must be 1-128 letters, digits, '_', '.', "
                        "':' or '-', starting with a letter or digit")
    return text


def check_device_id(text):
    """A PCI address or a USB id, normalised as the inventory stores it."""
    return device_kind_and_id(text)[1]


def device_kind_and_id(text):
    """("pci" | "usb", normalised id) for any form an attach accepts (`3b:00.0` too), so
    that whatever names a device in a body names it in a path as well."""
    for kind, normalize in (("pci", normalize_pci_address), ("usb", normalize_usb_id)):
        try:
            return kind, normalize(text)
        except InvalidId:
            pass
    raise InvalidId(f"{str(text)[:80]!r} is neither a PCI address like 0000:01:00.0 nor a "
                    "USB id like 046d:c52b:SERIAL or 046d:c52b@1-1.2")


# The controller's id for one create of a VM: recorded in the domain's metadata, so
# that a create retried or answered late is recognised, and a cancelled one refused.
OPERATION_ID = re.compile(r"^[0-9a-f]{32}$")


def check_operation_id(text):
    if not isinstance(text, str) or not OPERATION_ID.fullmatch(text):
        raise InvalidId(f"operation id {str(text)[:80]!r} must be 32 lower-case hex digits")
    return text
