"""`hostplane` commands that change one object: a VM, a host, a device, a network.

    hostplane vm create NAME --vcpus 4 --memory-mib 8192 --gpu 10de:1eb8 --usb ID
    hostplane vm show|start|stop|delete NAME          (stop --force)
    hostplane vm attach NAME --gpu ADDR|VVVV:DDDD --usb ID --pool NAME[:N]
    hostplane vm detach NAME HOST_ID DEVICE_ID
    hostplane host add URL --token-file FILE [--cluster C]
    hostplane host show|remove ID
    hostplane host state ID enabled|disabled|maintenance
    hostplane host iommu ID on|off
    hostplane host drain ID [--delete]     maintenance, then stop (or delete) its VMs
    hostplane device show|enable|disable|share|unshare|delete HOST_ID DEVICE_ID
    hostplane device rename HOST_ID DEVICE_ID NAME
    hostplane network show|delete NAME
    hostplane network create NAME --type vxlan-pool --vni-range 5000-5999 --local-cidr CIDR

Each prints what changed in a line or a small table, or the API's JSON with `--json`.
Calls that take seconds (attaching, which may move a stopped VM to its USB device's
host; registering; draining) print a progress line on stderr while they wait.
"""

from functools import partial
from urllib.parse import quote

from controller.opcli_base import CliError, emit_json, name_verbs, print_table
from controller.opcli_pools import pool_asks


def register(commands, gpu_asks):
    """Add the noun commands to the `hostplane` parser; `gpu_asks` turns --gpu texts into
    the API's GPU asks (shared with `schedule`). Returns `vm`'s verbs, where the caller
    adds `create` with the placement arguments it owns."""
    vm = commands.add_parser("vm", help="one VM: create, show, start, stop, delete, attach, "
                             "detach")
    verbs = vm_verbs = vm.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (("show", "the VM and its devices"), ("start", "start it"),
                       ("stop", "shut it down"), ("delete", "undefine it, release its devices")):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("name")
        if verb == "stop":
            sub.add_argument("--force", action="store_true", help="power off at once")
        sub.set_defaults(run=vm_show if verb == "show" else partial(vm_action, verb=verb))
    attach = verbs.add_parser("attach", help="add GPUs/USB devices (may move a stopped VM)")
    attach.add_argument("name")
    attach.add_argument("--gpu", action="append", default=[], metavar="ADDR|VVVV:DDDD[xN]")
    attach.add_argument("--usb", action="append", default=[], metavar="ID")
    attach.add_argument("--pool", action="append", default=[], metavar="NAME[:N]")
    attach.set_defaults(run=partial(vm_attach, gpu_asks=gpu_asks))
    detach = verbs.add_parser("detach", help="remove one device from the VM")
    detach.add_argument("name")
    detach.add_argument("host_id")
    detach.add_argument("device_id")
    detach.set_defaults(run=vm_detach)

    host = commands.add_parser("host", help="one host: add, show, state, iommu, drain, remove")
    verbs = host.add_subparsers(dest="verb", required=True, metavar="VERB")
    add = verbs.add_parser("add", help="register an agent and read its inventory")
    add.add_argument("agent_url", metavar="URL", help="the agent, e.g. https://node-17:7070")
    secret = add.add_mutually_exclusive_group(required=True)
    secret.add_argument("--token-file", help="file holding the agent's token")
    secret.add_argument("--agent-token", help="the agent's token (visible in ps: prefer a file)")
    add.add_argument("--cluster", default="default")
    add.set_defaults(run=host_add)
    for verb, text in (("show", "status, capacity, last error"),
                       ("remove", "forget it (refused while it holds VMs)")):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("host_id")
        sub.set_defaults(run=partial(host_simple, verb=verb))
    state = verbs.add_parser("state", help="enabled, disabled or maintenance (placement only)")
    state.add_argument("host_id")
    state.add_argument("state", choices=["enabled", "disabled", "maintenance"])
    state.set_defaults(run=lambda client, args: host_patch(client, args, {"state": args.state}))
    iommu = verbs.add_parser("iommu", help="switch GPU claims on this host on or off")
    iommu.add_argument("host_id")
    iommu.add_argument("switch", choices=["on", "off"])
    iommu.set_defaults(run=lambda client, args: host_patch(
        client, args, {"iommu_enabled": args.switch == "on"}))
    drain = verbs.add_parser("drain", help="maintenance, then stop (or --delete) every VM")
    drain.add_argument("host_id")
    drain.add_argument("--delete", action="store_true", help="delete the VMs, not stop them")
    drain.set_defaults(run=host_drain)

    device = commands.add_parser("device", help="one device: enable, disable, share, rename")
    verbs = device.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, change in DEVICE_CHANGES.items():
        sub = verbs.add_parser(verb, help=DEVICE_HELP[verb])
        sub.add_argument("host_id")
        sub.add_argument("device_id")
        if verb == "rename":
            sub.add_argument("new_name")
        sub.set_defaults(run=partial(device_change, change=change))

    network = commands.add_parser("network", help="one L2 network: show, create, delete")
    verbs = network.add_subparsers(dest="verb", required=True, metavar="VERB")
    name_verbs(verbs, ("show", "delete"), network_simple)
    create = verbs.add_parser("create", help="novlan, vlan, vxlan-pool or vxlan (from a pool)")
    create.add_argument("name")
    create.add_argument("--type", required=True, choices=["novlan", "vlan", "vxlan-pool", "vxlan"])
    create.add_argument("--cluster", action="append", default=[], dest="clusters")
    create.add_argument("--interface")
    create.add_argument("--vlan", type=int)
    create.add_argument("--vni-range", metavar="FIRST-LAST")
    create.add_argument("--local-cidr")
    create.add_argument("--pool")
    create.add_argument("--vni", type=int)
    create.add_argument("--mtu", type=int)
    create.set_defaults(run=network_create)

    orphan = commands.add_parser("orphan", help="a domain the controller has no record of: "
                                 "adopt it as a VM, or delete it")
    verbs = orphan.add_subparsers(dest="verb", required=True, metavar="VERB")
    adopt = verbs.add_parser("adopt", help="make it a VM holding its devices")
    adopt.add_argument("--tenant", help="the tenant the VM belongs to (default: admin's)")
    delete = verbs.add_parser("delete", help="destroy and undefine it (disk files stay)")
    for sub, verb in ((adopt, "adopt"), (delete, "delete")):
        sub.add_argument("host_id")
        sub.add_argument("name")
        sub.set_defaults(run=partial(orphan_action, verb=verb))
    return vm_verbs


# --- VMs -----------------------------------------------------------------------------------
def vm_show(client, args):
    vm = client.call("GET", f"/v1/vms/{quote(args.name)}")
    return emit_json(vm) if args.json else print_vm(vm)


def vm_action(client, args, verb):
    path = f"/v1/vms/{quote(args.name)}"
    if verb == "delete":
        answer = client.call("DELETE", path, progress=f"deleting VM {args.name}")
        if args.json:
            return emit_json(answer)
        print(f"VM {args.name} deleted")
        return 0
    body = {"force": True} if verb == "stop" and args.force else None
    doing = {"start": "starting", "stop": "stopping"}[verb]
    vm = client.call("POST", f"{path}/{verb}", body, progress=f"{doing} VM {args.name}")
    return emit_json(vm) if args.json else print_vm(vm)


def vm_attach(client, args, gpu_asks):
    body = {"gpus": gpu_asks(args.gpu), "usb": [{"id": usb} for usb in args.usb],
            "devices": pool_asks(args.pool)}
    if not body["gpus"] and not body["usb"] and not body["devices"]:
        raise CliError("name a device: --gpu ADDR|VVVV:DDDD, --usb ID or --pool NAME",
                       status=2)
    vm = client.call("POST", f"/v1/vms/{quote(args.name)}/devices", body,
                     progress=f"attaching to VM {args.name}")
    return emit_json(vm) if args.json else print_vm(vm)


def vm_detach(client, args):
    vm = client.call("DELETE", f"/v1/vms/{quote(args.name)}/devices/{quote(args.host_id)}/"
                     f"{quote(args.device_id, safe=':@')}",
                     progress=f"detaching {args.device_id} from VM {args.name}")
    return emit_json(vm) if args.json else print_vm(vm)


def print_vm(vm):
    print(f"VM {vm.get('name')} is {vm.get('state')} on {vm.get('host')}")
    print_table(vm.get("devices", []), [("KIND", "kind"), ("ID", "id"), ("TYPE", "type")])
    return 0


# --- hosts ---------------------------------------------------------------------------------
def host_add(client, args):
    token = args.agent_token
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise CliError(f"--token-file: {exc.strerror}: {args.token_file}", status=2) from None
    host = client.call("POST", "/v1/hosts", {"url": args.agent_url, "token": token,
                                             "cluster": args.cluster},
                       progress=f"registering {args.agent_url}")
    return emit_json(host) if args.json else print_host(host)


def host_simple(client, args, verb):
    path = f"/v1/hosts/{quote(args.host_id)}"
    if verb == "show":
        host = client.call("GET", path)
        return emit_json(host) if args.json else print_host(host)
    answer = client.call("DELETE", path)
    if args.json:
        return emit_json(answer)
    print(f"host {args.host_id} removed")
    return 0


def host_patch(client, args, change):
    host = client.call("PATCH", f"/v1/hosts/{quote(args.host_id)}", change)
    return emit_json(host) if args.json else print_host(host)


def host_drain(client, args):
    """Stop new placements, then stop (or delete) each VM, one progress line per VM."""
    host = client.call("PATCH", f"/v1/hosts/{quote(args.host_id)}", {"state": "maintenance"})
    vms = [vm for vm in client.call("GET", "/v1/vms").get("vms", [])
           if vm.get("host") == args.host_id]
    done = []
    for vm in vms:
        path = f"/v1/vms/{quote(vm['name'])}"
        if args.delete:
            client.call("DELETE", path, progress=f"deleting VM {vm['name']}")
        elif vm.get("state") != "stopped":
            client.call("POST", path + "/stop", {}, progress=f"stopping VM {vm['name']}")
        done.append({"vm": vm["name"], "now": "deleted" if args.delete else "stopped"})
    if args.json:
        return emit_json({"host": host, "vms": done})
    print(f"host {args.host_id} is in maintenance; {len(done)} VM(s) "
          f"{'deleted' if args.delete else 'stopped'}")
    print_table(done, [("VM", "vm"), ("NOW", "now")])
    return 0


def print_host(host):
    print_table([host], [("ID", "id"), ("CLUSTER", "cluster"), ("STATUS", "status"),
                         ("STATE", "state"), ("IOMMU", lambda h: "on" if h.get("iommu_enabled")
                                                  else "off"),
                         ("URL", "url"), ("LAST_ERROR", "last_error")])
    return 0


# --- devices -------------------------------------------------------------------------------
DEVICE_CHANGES = {"show": None, "enable": {"state": "enabled"},
                  "disable": {"state": "disabled"}, "share": {"shared": True},
                  "unshare": {"shared": False}, "rename": "name", "delete": "delete"}
DEVICE_HELP = {"show": "one device", "enable": "allow new claims",
               "disable": "refuse new claims (an attached device stays)",
               "share": "let tenants see and use it", "unshare": "admin-only again",
               "rename": "give it a name", "delete": "forget it (only when unavailable)"}


def device_change(client, args, change):
    path = f"/v1/devices/{quote(args.host_id)}/{quote(args.device_id, safe=':@')}"
    if change is None:
        device = client.call("GET", path)
    elif change == "delete":
        client.call("DELETE", path)
        if not args.json:
            print(f"device {args.device_id} on {args.host_id} forgotten")
            return 0
        return emit_json({})
    else:
        device = client.call("PATCH", path, {"name": args.new_name} if change == "name"
                             else change)
    if args.json:
        return emit_json(device)
    print_table([device], DEVICE_DETAIL)
    return 0


DEVICE_DETAIL = [("HOST", "host_id"), ("ID", "id"), ("TYPE", "type"), ("NAME", "name"),
                 ("STATE", "state"), ("STATUS", "status"), ("VM", "vm"),
                 ("SHARED", lambda d: "yes" if d.get("shared") else "no")]


# --- networks ------------------------------------------------------------------------------
def network_simple(client, args, verb):
    path = f"/v1/networks/{quote(args.name)}"
    answer = client.call("GET" if verb == "show" else "DELETE", path,
                         progress=None if verb == "show" else f"deleting network {args.name}")
    if args.json:
        return emit_json(answer)
    hosts = answer.get("hosts") or {}
    print(f"network {args.name} {'deleted' if verb == 'delete' else answer.get('type', '')}")
    rows = [{"host": host, **(state if isinstance(state, dict) else {"status": state})}
            for host, state in sorted(hosts.items())]
    print_table(rows, [("HOST", "host"), ("STATUS", "status"), ("ERROR", "error")])
    return 0


def network_create(client, args):
    body = {"name": args.name, "type": args.type}
    if args.clusters:
        body["clusters"] = args.clusters
    for field in ("interface", "vlan", "local_cidr", "pool", "vni", "mtu"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.vni_range:
        first, _, last = args.vni_range.partition("-")
        if not (first.isdigit() and last.isdigit()):
            raise CliError("--vni-range: FIRST-LAST, e.g. 5000-5999", status=2)
        body["vni_range"] = [int(first), int(last)]
    network = client.call("POST", "/v1/networks", body,
                          progress=f"creating network {args.name}")
    if args.json:
        return emit_json(network)
    print(f"network {network.get('name')} ({network.get('type')}) created")
    return 0


# --- orphans -------------------------------------------------------------------------------
def orphan_action(client, args, verb):
    path = f"/v1/orphans/{quote(args.host_id)}/{quote(args.name)}"
    if verb == "adopt":
        body = {"tenant": args.tenant} if args.tenant else {}
        answer = client.call("POST", path + "/adopt", body,
                             progress=f"adopting {args.name} on {args.host_id}")
    else:
        answer = client.call("DELETE", path, progress=f"deleting {args.name} on {args.host_id}")
    if args.json:
        return emit_json(answer or {})
    if verb == "adopt":
        print_vm(answer)
    else:
        print(f"orphan {args.name} on {args.host_id} deleted")
    return 0
