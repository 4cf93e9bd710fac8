"""VM disk files, confined to `[libvirt] storage_dir` (finding F3).

A disk given by the caller must resolve (symlinks followed, no `..`) to a regular file
inside the storage directory, or the agent creates a new image there; anything else is
a 400 before libvirt sees it. Deleting a VM's storage removes only files that still
resolve inside the directory, so a disk path edited with `virsh` to point at a host
file is left alone.
"""

import logging
import os
import subprocess

from hostplane.errors import BadRequest, Conflict

log = logging.getLogger(__name__)
QEMU_IMG = "qemu-img"


class Storage:
    def __init__(self, root):
        self.root = os.path.realpath(root)

    def disks_for(self, vm, disks):
        """The spec's disks as [{"path", "format"}], each inside the directory; new images
        (`size_mib` without `path`) are created there as `<vm>-vd<letter>.<format>`."""
        resolved = [self._resolve(disk["path"]) if disk.get("path") else None for disk in disks]
        made = []
        try:
            for index, (disk, path) in enumerate(zip(disks, resolved)):
                if path is None:
                    path = self._create(f"{vm}-vd{chr(ord('a') + index)}", disk)
                    made.append(path)
                resolved[index] = path
        except Exception:
            for path in made:
                os.unlink(path)
            raise
        return [{"path": path, "format": disk["format"]} for disk, path in zip(disks, resolved)], made

    def remove(self, paths):
        """Delete the files of `paths` that resolve inside the directory; the rest are kept
        and named in the answer, since the VM is gone already."""
        removed, kept = [], []
        for path in paths:
            real = self._inside(path)
            if real is None or not os.path.isfile(real):
                kept.append(path)
                continue
            try:
                os.unlink(real)
                removed.append(path)
            except OSError as exc:
                log.warning("could not delete %s: %s", real, exc)
                kept.append(path)
        return removed, kept

    # --- helpers ------------------------------------------------------------------------
    def _resolve(self, path):
        given = path if os.path.isabs(path) else os.path.join(self.root, path)
        real = self._inside(given)
        if real is None:
            raise BadRequest(f"disk {path} is outside the agent's storage directory {self.root}",
                             code="disk_outside_storage",
                             details={"path": path, "storage_dir": self.root})
        if not os.path.isfile(real):
            raise BadRequest(f"disk {path} is not a file in {self.root}; give size_mib to have "
                             "the agent create it", code="disk_not_found", details={"path": path})
        return real

    def _inside(self, path):
        if ".." in path.split("/"):
            return None
        real = os.path.realpath(path)
        return real if os.path.commonpath([real, self.root]) == self.root and real != self.root \
            else None

    def _create(self, stem, disk):
        if not disk.get("size_mib"):
            raise BadRequest("a disk needs a path in the storage directory or a size_mib",
                             code="invalid_request")
        path = os.path.join(self.root, f"{stem}.{disk['format']}")
        if os.path.lexists(path):
            raise BadRequest(f"{path} exists already; name it as the disk's path to use it",
                             code="disk_exists", details={"path": path})
        try:
            os.makedirs(self.root, mode=0o750, exist_ok=True)
            if disk["format"] == "raw":
                with open(path, "xb") as handle:
                    handle.truncate(disk["size_mib"] * 1024 * 1024)
            else:
                subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", path,
                                f"{disk['size_mib']}M"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise Conflict(f"could not create {path}: {exc}",
                           code="storage_error", details={"path": path}) from None
        return path
