"""Replace a JSON state file whole (write a temporary, fsync, rename), so a process
killed mid-write leaves the old file or the new one, never half of one."""

import json
import os


def write_json(path, value):
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
