"""`hostplane-agent inventory` and `check` are commands an operator waits for: they must
not load the web stack, which is most of a Python process's start-up (bench/inventory.py
prints the whole-process time against lspci)."""

import json
import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import build_parser, plain_inventory_args
from tests.hosts import small_gpu_host
from tests.synthetic import write_sysfs_tree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB_STACK = ("flask", "werkzeug", "pydantic", "jinja2", "sqlalchemy")
# Each was milliseconds of a command lspci answers in about 45 (together some 15 ms).
NOT_FOR_INVENTORY = ("argparse", "logging", "uuid", "socket", "platform", "datetime")


def test_inventory_command_prints_the_inventory_without_the_web_stack_or_argparse(tmp_path):
    tree = write_sysfs_tree(small_gpu_host(), tmp_path / "sys")
    unwanted = WEB_STACK + NOT_FOR_INVENTORY
    probe = ("import json, sys\n"
             "from agent.cli import main\n"
             f"status = main(['inventory', '--compact', '--sysfs-root', {str(tree)!r}])\n"
             f"loaded = sorted(m for m in {unwanted!r} if m in sys.modules)\n"
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


PLAIN = st.lists(st.sampled_from(["inventory", "serve", "check", "--compact", "--config",
                                  "--sysfs-root", "--sysfs-root=/t", "--config=/c.toml",
                                  "--sysfs", "--compact=1", "-h", "--", "/t", "-x", "x=y",
                                  "--sysfs-root=", "--bind"]), max_size=6)


@settings(max_examples=400, deadline=None)
@given(PLAIN)
def test_plain_inventory_arguments_read_as_argparse_reads_them(argv):
    """The fast path answers only what argparse would accept, and answers it alike."""
    quick = plain_inventory_args(argv)
    if quick is None:
        return
    try:
        full = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"{argv}: accepted without argparse, refused by it") from None
    assert vars(quick) == vars(full)


def test_plain_inventory_arguments_cover_what_operators_type():
    for argv in (["inventory"], ["inventory", "--compact"], ["--config", "/c", "inventory"],
                 ["inventory", "--sysfs-root", "/t", "--compact"],
                 ["inventory", "--sysfs-root=/t"]):
        assert vars(plain_inventory_args(argv)) == vars(build_parser().parse_args(argv))
    for argv in (["inventory", "-h"], ["inventory", "--sysfs", "/t"], ["serve"], [],
                 ["inventory", "--sysfs-root", "-t"], ["--compact", "inventory"]):
        assert plain_inventory_args(argv) is None
