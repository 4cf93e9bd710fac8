"""`hostplane-agent`: serve (default), inventory, check.

Only `serve` needs the web stack; `inventory` and `check` are commands an operator waits
for, so nothing here (nor in what they import) loads Flask, werkzeug or pydantic.
`hostplane-agent inventory` is compared with lspci (bench/inventory.py): its plain
spellings are parsed without argparse, which with its imports is 5 ms of ~60.
"""

import gc
import json
import os
import sys
from types import SimpleNamespace

from agent.config import check_serving_config, host_id, load_agent_config
from hostplane.config import ConfigError
from hostplane.core.jsontext import indented_json
from hostplane.service import exec_gunicorn


def main(argv=None):
    args = plain_inventory_args(sys.argv[1:] if argv is None else argv) \
        or build_parser().parse_args(argv)
    try:
        overrides = {}
        if getattr(args, "sysfs_root", None):
            overrides["host"] = {"sysfs_root": args.sysfs_root, "watch_udev": False}
        config = load_agent_config(args.config, overrides=overrides)
        if args.command == "inventory":
            status = print_inventory(config, args.compact)
            if argv is None:    # the program itself, not a caller in this process
                exit_at_once(status)
            return status
        if args.command == "check":
            from agent.check import run_check
            return run_check(config)
        return serve_forever(config, args)
    except ConfigError as exc:
        print(f"hostplane-agent: {exc}", file=sys.stderr)
        return 2


def build_parser():
    import argparse
    parser = argparse.ArgumentParser(prog="hostplane-agent",
                                     description="hostplane host agent")
    parser.add_argument("--config", help="config file (default /etc/hostplane/agent.toml)")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the agent API under gunicorn (default)")
    serve.add_argument("--bind", help="override [server] bind")
    inventory = commands.add_parser("inventory", help="print the device inventory as JSON")
    inventory.add_argument("--sysfs-root", help="read a captured sysfs tree instead of /sys")
    inventory.add_argument("--compact", action="store_true", help="one line of JSON")
    commands.add_parser("check", help="can this host pass GPUs through? exit 1 if not")
    return parser


def plain_inventory_args(argv):
    """`[--config F] inventory [--sysfs-root D] [--compact]`, every option spelled out
    (`--opt V` or `--opt=V`), as build_parser() would read it; None for anything else
    (help, abbreviations, mistakes, values starting with "-"): argparse decides those."""
    values = {"--config": None, "--sysfs-root": None}
    compact = command = False
    items = iter(argv)
    for item in items:
        name, equals, value = item.partition("=")
        if item == "inventory" and not command:
            command = True
        elif item == "--compact" and command:
            compact = True
        elif name in values and (name == "--sysfs-root") == command:
            value = value if equals else next(items, "")
            if not value or value.startswith("-"):
                return None
            values[name] = value
        else:
            return None
    if not command:
        return None
    return SimpleNamespace(command="inventory", config=values["--config"],
                           sysfs_root=values["--sysfs-root"], compact=compact)


def print_inventory(config, compact=False):
    """Print the inventory; exit 1 with one line when the tree cannot be read, or when
    its PCI directory lists functions and none of them could be read."""
    from agent.inventory.sysfs import SysfsTree, UnreadableTree
    from agent.services import Agent
    config["host"]["watch_udev"] = False
    if not config["host"]["id"]:
        try:
            host_id(config)
        except ConfigError:
            config["host"]["id"] = "unknown"
    tree = SysfsTree(config["host"]["sysfs_root"])
    # The scan makes ~100k short-lived objects and no reference cycles: the collector's
    # passes over them were 6 ms of a 60 ms command.
    gc.disable()
    try:
        tree.check_readable()
        listed = tree.pci_addresses()
        agent = Agent(config, one_shot=True)
        agent.scan()
    except (UnreadableTree, PermissionError) as exc:
        print(f"hostplane-agent: cannot read {config['host']['sysfs_root']}: {exc}",
              file=sys.stderr)
        return 1
    finally:
        gc.enable()
    raw = agent.inventory.body()[0]
    if compact:   # the API's own bytes with host_id spliced in: no second encoding
        sys.stdout.buffer.write(b'{"host_id":%s,%s\n' % (json.dumps(agent.host_id).encode(),
                                                          raw[1:]))
        sys.stdout.flush()
    else:
        print(indented_json({"host_id": agent.host_id, "generation": agent.inventory.generation,
                             **agent.inventory.document()}))
    for error in agent.inventory.errors():
        print(f"hostplane-agent: {error['kind']} {error['id']}: {error['error']}",
              file=sys.stderr)
    if listed and not agent.inventory.has_pci():
        print(f"hostplane-agent: {tree.pci_dir} lists {len(listed)} functions and none "
              "could be read", file=sys.stderr)
        return 1
    return 0


def exit_at_once(status):
    """End the command without tearing the interpreter down (a last garbage collection
    over all it loaded, then module clean-up: 5 ms of ~60). Output is flushed first; the
    command starts no thread and registers no exit handler, so nothing else is skipped."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve_forever(config, args):
    check_serving_config(config)
    exec_gunicorn(config["server"], "agent.app:create_app()", "HOSTPLANE_AGENT_CONFIG",
                  args.config, bind=getattr(args, "bind", None))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
