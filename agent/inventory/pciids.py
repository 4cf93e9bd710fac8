"""Vendor and device names from the pci.ids database, looked up per vendor on demand.

The file is 1.3 MB; parsing all of it costs more than scanning a big host, so only the
block of each vendor asked about is parsed, and the file is read once per process.
"""

import os

SEARCH_PATH = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids",
               "/usr/share/pci.ids", "/usr/local/share/pci.ids")


class PciIds:
    def __init__(self, path=None):
        self.path = path or next((p for p in SEARCH_PATH if os.path.exists(p)), None)
        self._text = None
        self._vendors = {}

    @property
    def available(self):
        return self.path is not None

    def names(self, vendor_id, device_id):
        """(vendor name, device name); either is None when the database lacks it."""
        entry = self._vendor(vendor_id)
        if entry is None:
            return None, None
        vendor_name, devices = entry
        return vendor_name, devices.get(device_id)

    def _vendor(self, vendor_id):
        if vendor_id in self._vendors:
            return self._vendors[vendor_id]
        text = self._load()
        entry = None
        start = text.find("\n" + vendor_id + "  ") if text else -1
        if start >= 0:
            entry = _parse_vendor_block(text, start + 1)
        self._vendors[vendor_id] = entry
        return entry

    def _load(self):
        if self._text is None:
            self._text = ""
            if self.path:
                try:
                    with open(self.path, encoding="utf-8", errors="replace") as handle:
                        self._text = handle.read()
                except OSError:
                    pass
        return self._text


def _parse_vendor_block(text, start):
    end = text.find("\n", start)
    vendor_name = text[start + 6:end].strip()
    devices = {}
    pos = end + 1
    while pos < len(text):
        end = text.find("\n", pos)
        if end < 0:
            end = len(text)
        line = text[pos:end]
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        if not line.startswith("\t"):
            break
        if line.startswith("\t\t"):
            continue
        devices[line[1:5]] = line[7:].strip()
    return vendor_name, devices


_shared = {}


def shared_pciids(path=None):
    """One database per path and process: reading it is the expensive part."""
    if path not in _shared:
        _shared[path] = PciIds(path)
    return _shared[path]
