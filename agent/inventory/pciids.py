"""Vendor and device names from the pci.ids database, looked up per vendor on demand.

The file is 1.3 MB; parsing all of it costs more than scanning a big host, so only the
block of each vendor asked about is parsed, and the file is read once per process.
`[host] pci_ids` points at a newer copy (a distribution's lags new GPUs by months);
otherwise the newest copy found on the host wins, by its `Version:` line.
"""

import logging
import os
import re

log = logging.getLogger(__name__)

SEARCH_PATH = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids",
               "/usr/share/pci.ids", "/usr/local/share/pci.ids",
               "/var/lib/hostplane/pci.ids")
_VERSION = re.compile(r"^#\s*Version:\s*(\S+)", re.MULTILINE)


def newest_copy(paths=SEARCH_PATH):
    """The path of the newest pci.ids among `paths` (Version line, then mtime), or None."""
    found = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                head = handle.read(2048)
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        match = _VERSION.search(head)
        found.append(((match.group(1) if match else ""), mtime, path))
    return max(found)[2] if found else None


class PciIds:
    def __init__(self, path=None):
        if path and not os.access(path, os.R_OK):
            log.warning("[host] pci_ids %s cannot be read; using the newest copy found", path)
            path = None
        self.path = path or newest_copy()
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
