"""`hostplane-agent inventory` and `check` are commands an operator waits for: they must
not load the web stack, which is most of a Python process's start-up (bench/inventory.py
prints the whole-process time against lspci)."""

import json
import os
import subprocess
import sys

from tests.hosts import small_gpu_host
from tests.synthetic import write_sysfs_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB_STACK = ("flask", "werkzeug", "pydantic", "jinja2", "sqlalchemy")


def test_inventory_command_prints_the_inventory_without_importing_the_web_stack(tmp_path):
    tree = write_sysfs_tree(small_gpu_host(), tmp_path / "sys")
    probe = ("import json, sys\n"
             "from agent.cli import main\n"
             f"status = main(['inventory', '--compact', '--sysfs-root', {str(tree)!r}])\n"
             f"loaded = sorted(m for m in {WEB_STACK!r} if m in sys.modules)\n"
             "print(json.dumps(loaded), file=sys.stderr)\n"
             "sys.exit(status)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
    inventory = json.loads(done.stdout)
    assert inventory["host_id"] and inventory["generation"] >= 1
    assert "0000:3b:00.0" in {d["id"] for d in inventory["pci"]}
    assert "0781:5567:4C530001" in {d["id"] for d in inventory["usb"]}
