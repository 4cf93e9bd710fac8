"""Vendor and device names from the pci.ids database, looked up per vendor on demand.

The file is 1.3 MB; parsing all of it costs more than scanning a big host, so only the
block of each vendor asked about is parsed, and the file is read once per process.
A distribution's pci.ids lags new GPUs by months, so several databases are asked, the
first that knows a name winning: `[host] pci_ids` (an operator's newer file; the Ansible
role can ship one), then every pci.ids on the host newest first (by its `Version:` line,
else its date), then udev's hwdb source, which systemd updates on its own schedule. That
is the order lspci uses (pci.ids, then hwdb), so both name a device alike.

Reading the databases is most of a short command's work (40 ms on a big server, where
the sysfs scan is 25), and a host asks about a few dozen ids: the answers are kept in
`<state_dir>/pci-names.json`, valid while every database keeps its size and mtime.
Without a writable state directory every process reads the databases itself.
"""

import json
import os
import re
import time

from agent.atomic import write_json

CACHE_NAME = "pci-names.json"
_CACHE_FORMAT = 1

SEARCH_PATH = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids",
               "/usr/share/pci.ids", "/usr/local/share/pci.ids")
HWDB_PATH = ("/usr/lib/udev/hwdb.d/20-pci-vendor-model.hwdb",
             "/lib/udev/hwdb.d/20-pci-vendor-model.hwdb")
_VERSION = re.compile(r"^#\s*Version:\s*([0-9.]+)", re.MULTILINE)


def database_date(path):
    """"2023.04.10" from a pci.ids `Version:` line, else from the file's mtime; None if absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.read(2048)
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    match = _VERSION.search(head)
    return match.group(1) if match else time.strftime("%Y.%m.%d", time.gmtime(mtime))


def newest_copy(paths=SEARCH_PATH):
    """The path of the newest pci.ids among `paths`, or None."""
    dated = [(database_date(path), path) for path in paths]
    dated = [entry for entry in dated if entry[0] is not None]
    return max(dated)[1] if dated else None


class HostNames:
    """Names from every database on the host, newest first; the first that knows wins."""

    def __init__(self, configured=None, pci_ids=SEARCH_PATH, hwdb=HWDB_PATH, cache_dir=None):
        self.sources = []
        if configured:
            if os.access(configured, os.R_OK):
                self.sources.append(PciIds(configured))
            else:
                import logging  # only here: `hostplane-agent inventory` never loads it
                logging.getLogger(__name__).warning(
                    "[host] pci_ids %s cannot be read; using the host's copies", configured)
        dated = sorted(((date, path) for date, path in
                        ((database_date(path), path) for path in pci_ids) if date),
                       reverse=True)
        candidates = [PciIds(path) for _, path in dated] + \
            [HwdbNames(path) for path in hwdb if os.path.exists(path)]
        seen = {os.path.realpath(source.path) for source in self.sources}
        for source in candidates:
            real = os.path.realpath(source.path)
            if real not in seen:
                seen.add(real)
                self.sources.append(source)
        self._cache_path = os.path.join(cache_dir, CACHE_NAME) if cache_dir else None
        self._fingerprint = self._sources_fingerprint()
        self._answers = self._load_answers()
        self._unsaved = False

    @property
    def available(self):
        return bool(self.sources)

    def names(self, vendor_id, device_id):
        key = f"{vendor_id}:{device_id}"
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = self._ask(vendor_id, device_id)
            self._unsaved = True
        return answer

    def save(self):
        """Keep this process's answers for the next one (best effort)."""
        if not self._unsaved or self._cache_path is None or self._fingerprint is None:
            return
        if not os.access(os.path.dirname(self._cache_path), os.W_OK):
            return   # a read-only command does not create the agent's state directory
        try:
            write_json(self._cache_path, {"format": _CACHE_FORMAT, "sources": self._fingerprint,
                                          "names": self._answers})
        except OSError:
            return
        self._unsaved = False

    def _sources_fingerprint(self):
        """[[kind, path, size, mtime]] of each database in the order asked; None if one
        cannot be stat'ed (then nothing is cached)."""
        try:
            return [[type(source).__name__, source.path, status.st_size, status.st_mtime_ns]
                    for source in self.sources for status in (os.stat(source.path),)]
        except OSError:
            return None

    def _load_answers(self):
        if self._cache_path is None or self._fingerprint is None:
            return {}
        try:
            with open(self._cache_path, encoding="utf-8") as handle:
                stored = json.load(handle)
            if stored.get("format") != _CACHE_FORMAT or stored.get("sources") != self._fingerprint:
                return {}
            return {key: (vendor, device) for key, (vendor, device) in stored["names"].items()}
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            return {}

    def _ask(self, vendor_id, device_id):
        vendor_name = device_name = None
        for source in self.sources:
            vendor, device = source.names(vendor_id, device_id)
            vendor_name = vendor_name or vendor
            device_name = device_name or device
            if vendor_name and device_name:
                break
        return vendor_name, device_name


class HwdbNames:
    """udev's hwdb source text (`pci:v000010DEd00002901*` / `ID_MODEL_FROM_DATABASE=`)."""

    def __init__(self, path):
        self.path = path
        self._data = None
        self._vendors = {}

    def names(self, vendor_id, device_id):
        vendor_name, models = self._vendor(f"pci:v0000{vendor_id.upper()}")
        return vendor_name, models.get(device_id.upper())

    def _vendor(self, vendor):
        """(vendor name, {device: model}) from one pass over the vendor's entries."""
        if vendor not in self._vendors:
            block = self._block(vendor)
            models = {}
            for device, model in re.findall("\n" + re.escape(vendor) + _HWDB_MODEL, block):
                models.setdefault(device, model.strip() or None)
            self._vendors[vendor] = (
                _hwdb_value(block, f"\n{vendor}*\n ID_VENDOR_FROM_DATABASE="), models)
        return self._vendors[vendor]

    def _block(self, vendor):
        """One vendor's contiguous run of entries (the file is sorted), found in the raw
        bytes and only it decoded: searching 4 MB of decoded text took 14 ms a vendor."""
        if self._data is None:
            self._data = _read_bytes(self.path)
        head = ("\n" + vendor).encode()
        start = self._data.find(head)
        if start < 0:
            return ""
        end = self._data.find(b"\n\n", self._data.rfind(head) + 1)
        return self._data[start:end if end >= 0 else len(self._data)].decode(
            "utf-8", "replace") + "\n"


def _read_bytes(path):
    if not path:
        return b""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


# A model line of hwdb, after its vendor's `pci:v0000XXXX`: device, model name.
_HWDB_MODEL = r"d0000([0-9A-F]{4})\*\n ID_MODEL_FROM_DATABASE=([^\n]*)"


def _hwdb_value(block, needle):
    start = block.find(needle)
    if start < 0:
        return None
    start += len(needle)
    return block[start:block.find("\n", start)].strip() or None


class PciIds:
    """One pci.ids file (the one at `path`, else the newest on the host)."""

    def __init__(self, path=None):
        self.path = path or newest_copy()
        self._data = None
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
        """(name, {device: name} from one pass over the vendor's own lines), or None.
        Found in the raw bytes and only those lines decoded (as for hwdb)."""
        if vendor_id in self._vendors:
            return self._vendors[vendor_id]
        if self._data is None:
            self._data = _read_bytes(self.path)
        entry = None
        start = self._data.find(("\n" + vendor_id + "  ").encode())
        if start >= 0:
            end = _VENDOR_LINE.search(self._data, start + 1)
            lines = self._data[start:end.start() if end else len(self._data)].decode(
                "utf-8", "replace")
            line_end = lines.find("\n", 1)
            if line_end < 0:   # the vendor's line is the file's last
                line_end = len(lines)
            devices = {}
            for device, name in _DEVICE_LINE.findall(lines, line_end):
                devices.setdefault(device, name.strip())
            entry = (lines[7:line_end].strip(), devices)
        self._vendors[vendor_id] = entry
        return entry


# The next vendor's line (or the device classes'): where a vendor's devices end.
_VENDOR_LINE = re.compile(rb"\n[0-9a-fC]")
# A device line of a vendor (subsystem lines have two tabs): id, name.
_DEVICE_LINE = re.compile(r"\n\t([0-9a-f]{4})  ([^\n]*)")


_shared = {}


def shared_pciids(path=None, cache_dir=None):
    """The host's names (`[host] pci_ids` first) once per process: reading is the expensive part."""
    if (path, cache_dir) not in _shared:
        _shared[path, cache_dir] = HostNames(path, cache_dir=cache_dir)
    return _shared[path, cache_dir]
