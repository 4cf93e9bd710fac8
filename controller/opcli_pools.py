"""`hostplane` commands for device pools:

    hostplane pools
    hostplane pool show NAME
    hostplane pool create NAME --match 10de:20b5 [--subsystem 10de:1533] [--type gpu]
                               [--vf-of 8086:1593]
    hostplane pool delete NAME
    hostplane pool share NAME TENANT --max-count 4;  hostplane pool unshare NAME TENANT

and `--pool NAME[:N]` for `schedule`/`vm create`/`vm attach` (pool_asks).
"""

import re
from urllib.parse import quote

from controller.opcli_base import CliError, emit_json, name_verbs, print_table

MODEL = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
# NAME or NAME:COUNT; a pool name may end in x2, so the count has a separator of its own
POOL_ASK = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,62})(?::([0-9]+))?$")
POOL_COLUMNS = [
    ("NAME", "name"), ("MATCH", lambda p: _match_text(p)), ("SIZE", "size"), ("FREE", "free"),
    ("ATTACHED", "attached"), ("UNAVAILABLE", "unavailable"),
    ("HOSTS", lambda p: len(p.get("hosts") or {})),
    ("SHARES", lambda p: ",".join(f"{s['tenant']}:{s['used']}/{s['max_count']}"
                                  for s in p.get("shares") or [])
     or (f"{p['quota']['used']}/{p['quota']['max_count']}" if p.get("quota") else None))]


def register(commands):
    commands.add_parser("pools", help="device pools with their size and what is free").set_defaults(
        run=show_pools)
    pool = commands.add_parser("pool", help="one device pool: show, create, delete, share")
    verbs = pool.add_subparsers(dest="verb", required=True, metavar="VERB")
    name_verbs(verbs, ("show", "delete"), pool_simple)
    create = verbs.add_parser("create", help="a pool of the devices matching a model")
    create.add_argument("name")
    create.add_argument("--match", required=True, metavar="VVVV:DDDD",
                        help="vendor_id:device_id of the devices")
    create.add_argument("--subsystem", metavar="VVVV:DDDD", help="subsystem ids too")
    create.add_argument("--type", help="the inventory's type too (gpu, nvme, nic, ...)")
    create.add_argument("--vf-of", metavar="VVVV:DDDD", help="virtual functions of this PF model")
    create.set_defaults(run=pool_create)
    share = verbs.add_parser("share", help="let a tenant use the pool, up to --max-count")
    share.add_argument("name")
    share.add_argument("tenant")
    share.add_argument("--max-count", type=int, required=True)
    share.set_defaults(run=pool_share)
    unshare = verbs.add_parser("unshare", help="stop sharing (its VMs keep their devices)")
    unshare.add_argument("name")
    unshare.add_argument("tenant")
    unshare.set_defaults(run=pool_unshare)


def pool_asks(texts):
    """--pool values as the API's `devices`: NAME or NAME:COUNT."""
    asks = []
    for text in texts:
        found = POOL_ASK.match(text)
        if not found:
            raise CliError(f"--pool {text!r}: give a pool name, or NAME:COUNT (a100:4)",
                           status=2)
        asks.append({"pool": found[1], "count": int(found[2] or 1)})
    return asks


def show_pools(client, args):
    answer = client.call("GET", "/v1/device-pools")
    if args.json:
        return emit_json(answer)
    print_table(answer["pools"], POOL_COLUMNS)
    return 0


def pool_simple(client, args, verb):
    path = f"/v1/device-pools/{quote(args.name)}"
    if verb == "delete":
        answer = client.call("DELETE", path)
        if args.json:
            return emit_json(answer)
        print(f"device pool {args.name} deleted")
        return 0
    return _print_pool(client.call("GET", path), args)


def pool_create(client, args):
    body = {"name": args.name}
    body["vendor_id"], body["device_id"] = _model(args.match, "--match")
    if args.subsystem:
        body["subsystem_vendor_id"], body["subsystem_device_id"] = _model(args.subsystem,
                                                                          "--subsystem")
    if args.type:
        body["type"] = args.type
    if args.vf_of:
        body["vf_of"] = ":".join(_model(args.vf_of, "--vf-of"))
    pool = client.call("POST", "/v1/device-pools", body)
    return _print_pool(pool, args)


def pool_share(client, args):
    share = client.call("PUT", f"/v1/device-pools/{quote(args.name)}/shares/"
                        f"{quote(args.tenant)}", {"max_count": args.max_count})
    if args.json:
        return emit_json(share)
    print(f"device pool {args.name} shared with {args.tenant}: "
          f"{share['used']} of {share['max_count']} in use")
    return 0


def pool_unshare(client, args):
    client.call("DELETE", f"/v1/device-pools/{quote(args.name)}/shares/{quote(args.tenant)}")
    if not args.json:
        print(f"device pool {args.name} no longer shared with {args.tenant}")
    return 0


def _print_pool(pool, args):
    if args.json:
        return emit_json(pool)
    print_table([pool], POOL_COLUMNS)
    if pool.get("hosts"):
        print()
        print_table([{"host": host, **counts} for host, counts in pool["hosts"].items()],
                    [("HOST", "host"), ("SIZE", "size"), ("FREE", "free"),
                     ("ATTACHED", "attached"), ("UNAVAILABLE", "unavailable")])
    if pool.get("warning"):
        print(f"warning: {pool['warning']}")
    return 0


def _model(text, option):
    found = MODEL.match(text or "")
    if not found:
        raise CliError(f"{option} {text!r}: give vendor:device in hex (10de:20b5)", status=2)
    return found[1].lower(), found[2].lower()


def _match_text(pool):
    text = f"{pool['vendor_id']}:{pool['device_id']}"
    if pool.get("subsystem_vendor_id") or pool.get("subsystem_device_id"):
        text += f" sub {pool.get('subsystem_vendor_id') or '*'}:" \
                f"{pool.get('subsystem_device_id') or '*'}"
    if pool.get("type"):
        text += f" type {pool['type']}"
    if pool.get("vf_of"):
        text += f" vf-of {pool['vf_of']}"
    return text
