"""`hostplane`: the operator's command line over the controller's HTTP API.

    hostplane hosts
    hostplane devices --type gpu --status ready --cluster gpu-a
    hostplane vms
    hostplane networks
    hostplane orphans; hostplane orphan adopt node-17 old-vm --tenant acme
    hostplane schedule --explain --vcpus 8 --memory-mib 32768 --gpu 10de:2236x2
    hostplane schedule --name train-1 --vcpus 8 --memory-mib 32768 --gpu 10de:2236
    hostplane pools; hostplane pool create a100 --match 10de:20b5 (controller/opcli_pools.py)
    hostplane vm stop train-1; hostplane host drain node-17; hostplane device share ...
    (the one-object commands are in controller/opcli_actions.py)

Tables by default, `--json` for scripts (the API's own JSON). `--url`/HOSTPLANE_URL and
`--token`/HOSTPLANE_TOKEN say where and who; after `scripts/run-local` neither is needed
(its controller URL and admin token are read from its state dir). Exit status: 0 done, 1 the API refused (its
error printed) or `schedule --explain` found no host, 2 usage or an unreachable controller.
"""

import argparse
import os
import re
import sys
from functools import partial
from urllib.parse import urlencode

from controller import opcli_actions, opcli_pools
from controller.opcli_base import (LOCAL_STATE, CliError, Client, emit_json, print_table,
                                   short_time, with_progress)  # noqa: F401 - with_progress re-exported

from hostplane.core.ids import PCI_ADDRESS

DEFAULT_URL = "http://127.0.0.1:7080"
GPU_MODEL = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?:x([0-9]+))?$")


def main(argv=None):
    args = parser().parse_args(argv)
    client = Client(args.url, args.token, args.timeout)
    try:
        return args.run(client, args)
    except CliError as exc:
        print(f"hostplane: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


def parser():
    top = argparse.ArgumentParser(prog="hostplane", description=__doc__.split("\n\n")[0],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--url", default=os.environ.get("HOSTPLANE_URL") or local("controller.url")
                     or DEFAULT_URL, help="controller URL (HOSTPLANE_URL, else run-local's, "
                     "else %s)" % DEFAULT_URL)
    top.add_argument("--token", default=os.environ.get("HOSTPLANE_TOKEN") or local("admin.token"),
                     help="admin or tenant token (HOSTPLANE_TOKEN, else run-local's admin "
                     "token when readable)")
    top.add_argument("--timeout", type=float, default=600.0,
                     help="seconds to wait for one answer (default %(default)s)")
    top.add_argument("--json", action="store_true", help="print the API's JSON")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("hosts", help="hosts with status and capacity").set_defaults(
        run=partial(show_listing, path="/v1/hosts", key="hosts", columns=HOST_COLUMNS))
    devices = commands.add_parser("devices", help="every device of every host")
    for name, text in (("host", "host id"), ("cluster", "cluster name"),
                       ("type", "gpu, gpu-audio, nic, usb, ..."),
                       ("status", "ready, attached or unavailable"), ("kind", "pci or usb"),
                       ("pool", "device pool name")):
        devices.add_argument(f"--{name}", help=text)
    devices.set_defaults(run=partial(show_listing, path=devices_path, key="devices",
                                     columns=DEVICE_COLUMNS))
    commands.add_parser("vms", help="VMs with their host and devices").set_defaults(
        run=partial(show_listing, path="/v1/vms", key="vms", columns=VM_COLUMNS))
    commands.add_parser("orphans", help="domains on agents the controller has no record "
                        "of").set_defaults(run=show_orphans)
    commands.add_parser("networks", help="L2 networks").set_defaults(
        run=partial(show_listing, path="/v1/networks", key="networks",
                    columns=NETWORK_COLUMNS))

    schedule = commands.add_parser(
        "schedule", help="place a VM (create it), or --explain where it would go and why not")
    schedule.add_argument("--explain", action="store_true",
                          help="change nothing: ranked candidates and every rejected host")
    schedule.add_argument("--name", default="explain-probe", help="VM name")
    schedule.add_argument("--code", action="append", default=[], metavar="CODE",
                          help="with --explain: show only rejections with this reason code "
                               "(repeatable; e.g. not_enough_memory, device_attached)")
    placement_arguments(schedule)
    vm_verbs = opcli_actions.register(commands, gpu_asks)
    opcli_pools.register(commands)
    create = vm_verbs.add_parser("create", help="place and create a VM (as schedule without "
                                 "--explain), a progress line while it waits")
    create.add_argument("name")
    placement_arguments(create)
    create.set_defaults(explain=False, code=[])
    return top


def placement_arguments(schedule):
    """What `schedule` and `vm create` ask: size, devices, where."""
    schedule.add_argument("--vcpus", type=int, required=True)
    schedule.add_argument("--memory-mib", type=int, required=True)
    schedule.add_argument("--gpu", action="append", default=[], metavar="ADDR|VVVV:DDDD[xN]",
                          help="a GPU by PCI address, or N of a model (repeatable)")
    schedule.add_argument("--pool", action="append", default=[], metavar="NAME[:N]",
                          help="N devices of a device pool (repeatable)")
    schedule.add_argument("--usb", action="append", default=[], metavar="ID",
                          help="a USB device id (repeatable)")
    schedule.add_argument("--bridge", action="append", default=[], help="network bridge")
    for name in ("host", "cluster", "anti-affinity-group"):
        schedule.add_argument(f"--{name}")
    schedule.add_argument("--strategy", choices=["least-cpu", "least-memory"])
    schedule.add_argument("--numa", choices=["required", "preferred", "none"],
                          help="devices, vCPUs and memory on one NUMA node")
    schedule.add_argument("--locality", choices=["same-switch", "same-numa", "any"],
                          help="where the devices of one ask sit, for a count over 1")
    schedule.add_argument("--locality-mode", choices=["required", "preferred"])
    schedule.add_argument("--no-start", action="store_true", help="define, do not start")
    schedule.set_defaults(run=schedule_vm)


def local(name):
    """What `scripts/run-local` left in its state dir (a URL, a token), or ""."""
    state = os.environ.get("HOSTPLANE_LOCAL_STATE", LOCAL_STATE)
    try:
        with open(os.path.join(state, name), encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


# --- commands ------------------------------------------------------------------------------
HOST_COLUMNS = [
    ("ID", "id"), ("CLUSTER", "cluster"), ("STATUS", "status"), ("STATE", "state"),
    ("IOMMU", lambda h: "ready" if h.get("iommu_ready") else "not ready"), ("VMS", "vms"),
    ("VCPUS", lambda h: f"{h.get('used_vcpus', 0)}/{h.get('cpu_threads') or '?'}"),
    ("MEMORY_MIB", lambda h: f"{h.get('used_memory_mib', 0)}/{h.get('memory_mib') or '?'}"),
    ("LAST_SEEN", lambda h: short_time(h.get("last_seen"))), ("LAST_ERROR", "last_error")]
DEVICE_COLUMNS = [
    ("HOST", "host_id"), ("ID", "id"), ("TYPE", "type"),
    ("MODEL", lambda d: f"{d.get('vendor_id')}:{d.get('device_id') or d.get('product_id')}"),
    ("NAME", "name"), ("STATE", "state"),
    ("STATUS", "status"), ("VM", "vm"), ("SHARED", lambda d: "yes" if d.get("shared") else "no"),
    ("CREATED", lambda d: short_time(d.get("created_at")))]
VM_COLUMNS = [
    ("NAME", "name"), ("HOST", "host"), ("STATE", "state"), ("VCPUS", "vcpus"),
    ("MEMORY_MIB", "memory_mib"), ("TENANT", "tenant"),
    ("DEVICES", lambda v: ",".join(d["id"] for d in v.get("devices", []))),
    ("CREATED", lambda v: short_time(v.get("created_at")))]
NETWORK_COLUMNS = [
    ("NAME", "name"), ("TYPE", "type"), ("INTERFACE", "interface"), ("VLAN", "vlan"),
    ("VNI", lambda n: n.get("vni") or "-".join(map(str, n.get("vni_range") or [])) or None),
    ("CLUSTERS", lambda n: ",".join(n.get("clusters") or [])),
    ("HOSTS", lambda n: ",".join(f"{host}:{state.get('status')}"
                                 for host, state in sorted((n.get("hosts") or {}).items())))]
DEVICE_FILTERS = ("host", "cluster", "type", "status", "kind", "pool")


def show_listing(client, args, path, key, columns):
    """GET a collection and print it as a table (or as the API's JSON)."""
    answer = client.call("GET", path(args) if callable(path) else path)
    if args.json:
        return emit_json(answer)
    print_table(answer.get(key, []), columns)
    return 0


ORPHAN_COLUMNS = [
    ("HOST", "host_id"), ("NAME", "name"), ("STATE", "state"), ("VCPUS", "vcpus"),
    ("MEMORY_MIB", "memory_mib"), ("DEVICES", lambda o: ",".join(d["id"] for d in o["devices"])),
    ("NAME_CLASH", lambda o: "yes" if o.get("name_clash") else "no")]


def show_orphans(client, args):
    """Orphans as a table; hosts that could not be asked are said on stderr (exit 1)."""
    answer = client.call("GET", "/v1/orphans")
    if args.json:
        return emit_json(answer)
    print_table(answer["orphans"], ORPHAN_COLUMNS)
    for host_id, why in sorted(answer["unreachable"].items()):
        print(f"hostplane: {host_id} not asked: {why}", file=sys.stderr)
    return 1 if answer["unreachable"] else 0


def devices_path(args):
    filters = {name: getattr(args, name) for name in DEVICE_FILTERS if getattr(args, name)}
    return "/v1/devices" + ("?" + urlencode(filters) if filters else "")


def schedule_vm(client, args):
    body = placement_body(args)
    if args.explain:
        answer = client.call("POST", "/v1/schedule/explain", body)
        if args.json:
            emit_json(answer)
        else:
            print_explanation(answer, set(args.code))
        return 0 if answer.get("chosen") else 1
    vm = client.call("POST", "/v1/vms", body, progress=f"creating VM {body['name']}")
    if args.json:
        return emit_json(vm)
    return opcli_actions.print_vm(vm)


def placement_body(args):
    body = {"name": args.name, "vcpus": args.vcpus, "memory_mib": args.memory_mib}
    gpus = gpu_asks(args.gpu)
    if gpus:
        body["gpus"] = gpus
    if args.usb:
        body["usb"] = [{"id": usb} for usb in args.usb]
    if args.pool:
        body["devices"] = opcli_pools.pool_asks(args.pool)
    if args.bridge:
        body["networks"] = [{"bridge": bridge} for bridge in args.bridge]
    for name in ("host", "cluster", "anti_affinity_group", "strategy", "numa", "locality",
                 "locality_mode"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    if args.no_start:
        body["start"] = False
    return body


def gpu_asks(texts):
    """--gpu values as the API's asks: a PCI address, or vendor:device[xCOUNT]."""
    gpus = []
    for text in texts:
        model = GPU_MODEL.match(text)
        if model:
            gpus.append({"vendor_id": model[1].lower(), "device_id": model[2].lower(),
                         "count": int(model[3] or 1)})
        elif PCI_ADDRESS.match(text.lower()):
            gpus.append({"id": text})
        else:
            raise CliError(f"--gpu {text!r}: give a PCI address (0000:3b:00.0) or "
                           "vendor:device[xCOUNT] (10de:2236x2)", status=2)
    return gpus


def print_explanation(answer, codes=frozenset()):
    """Candidates, then each rejected host's reasons with their codes (only `codes`, if any)."""
    chosen, refused = answer.get("chosen"), answer.get("refused")
    if refused:   # it would fit, but the create is refused (a tenant's quota)
        print(f"refused ({refused['code']}): {refused['message']}")
    else:
        print(f"placeable: {chosen} would be chosen" if chosen else "not placeable on any host")
    for quota in answer.get("quotas") or []:
        if quota["exceeded"]:
            print(f"over the quota of pool {quota['pool']}: {quota['used']} held, "
                  f"{quota['asked']} asked, {quota['limit']} allowed")
    if answer.get("candidates"):
        print("\ncandidates (best first):")
        print_table(answer["candidates"], [
            ("HOST", "host"), ("SCORE", "score"),
            ("DEVICES", lambda c: ",".join(d["id"] for d in c.get("devices", [])))])
    rows = [{"host": host, **record}
            for host, records in sorted((answer.get("reasons") or {}).items())
            for record in records if not codes or record["code"] in codes]
    if rows:
        print("\nrejected:")
        print_table(rows, [("HOST", "host"), ("CODE", "code"), ("REASON", "message")])


if __name__ == "__main__":
    sys.exit(main())
