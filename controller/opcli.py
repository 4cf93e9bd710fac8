"""`hostplane`: the operator's command line over the controller's HTTP API.

    hostplane hosts
    hostplane devices --type gpu --status ready --cluster gpu-a
    hostplane vms
    hostplane networks
    hostplane schedule --explain --vcpus 8 --memory-mib 32768 --gpu 10de:2236x2
    hostplane schedule --name train-1 --vcpus 8 --memory-mib 32768 --gpu 10de:2236

Tables by default, `--json` for scripts (the API's own JSON). `--url`/HOSTPLANE_URL and
`--token`/HOSTPLANE_TOKEN say where and who. Exit status: 0 done, 1 the API refused (its
error printed) or `schedule --explain` found no host, 2 usage or an unreachable controller.
"""

import argparse
import json
import os
import re
import sys
import threading
import time
from functools import partial
from urllib.parse import urlencode

import requests

from hostplane.core.ids import PCI_ADDRESS

DEFAULT_URL = "http://127.0.0.1:7080"
GPU_MODEL = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?:x([0-9]+))?$")


class CliError(Exception):
    """Something to print on stderr and exit with `status`."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


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
    top.add_argument("--url", default=os.environ.get("HOSTPLANE_URL", DEFAULT_URL),
                     help="controller URL (HOSTPLANE_URL, default %(default)s)")
    top.add_argument("--token", default=os.environ.get("HOSTPLANE_TOKEN", ""),
                     help="admin or tenant token (HOSTPLANE_TOKEN)")
    top.add_argument("--timeout", type=float, default=600.0,
                     help="seconds to wait for one answer (default %(default)s)")
    top.add_argument("--json", action="store_true", help="print the API's JSON")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("hosts", help="hosts with status and capacity").set_defaults(
        run=partial(show_listing, path="/v1/hosts", key="hosts", columns=HOST_COLUMNS))
    devices = commands.add_parser("devices", help="every device of every host")
    for name, text in (("host", "host id"), ("cluster", "cluster name"),
                       ("type", "gpu, gpu-audio, nic, usb, ..."),
                       ("status", "ready, attached or unavailable"), ("kind", "pci or usb")):
        devices.add_argument(f"--{name}", help=text)
    devices.set_defaults(run=partial(show_listing, path=devices_path, key="devices",
                                     columns=DEVICE_COLUMNS))
    commands.add_parser("vms", help="VMs with their host and devices").set_defaults(
        run=partial(show_listing, path="/v1/vms", key="vms", columns=VM_COLUMNS))
    commands.add_parser("networks", help="L2 networks").set_defaults(
        run=partial(show_listing, path="/v1/networks", key="networks",
                    columns=NETWORK_COLUMNS))

    schedule = commands.add_parser(
        "schedule", help="place a VM (create it), or --explain where it would go and why not")
    schedule.add_argument("--explain", action="store_true",
                          help="change nothing: ranked candidates and every rejected host")
    schedule.add_argument("--name", default="explain-probe", help="VM name")
    schedule.add_argument("--vcpus", type=int, required=True)
    schedule.add_argument("--memory-mib", type=int, required=True)
    schedule.add_argument("--gpu", action="append", default=[], metavar="ADDR|VVVV:DDDD[xN]",
                          help="a GPU by PCI address, or N of a model (repeatable)")
    schedule.add_argument("--usb", action="append", default=[], metavar="ID",
                          help="a USB device id (repeatable)")
    schedule.add_argument("--bridge", action="append", default=[], help="network bridge")
    for name in ("host", "cluster", "anti-affinity-group"):
        schedule.add_argument(f"--{name}")
    schedule.add_argument("--strategy", choices=["least-cpu", "least-memory"])
    schedule.add_argument("--no-start", action="store_true", help="define, do not start")
    schedule.set_defaults(run=schedule_vm)
    return top


# --- commands ------------------------------------------------------------------------------
HOST_COLUMNS = [
    ("ID", "id"), ("CLUSTER", "cluster"), ("STATUS", "status"), ("STATE", "state"),
    ("IOMMU", lambda h: "ready" if h.get("iommu_ready") else "not ready"), ("VMS", "vms"),
    ("VCPUS", lambda h: f"{h.get('used_vcpus', 0)}/{h.get('cpu_threads') or '?'}"),
    ("MEMORY_MIB", lambda h: f"{h.get('used_memory_mib', 0)}/{h.get('memory_mib') or '?'}"),
    ("LAST_SEEN", lambda h: short_time(h.get("last_seen"))), ("LAST_ERROR", "last_error")]
DEVICE_COLUMNS = [
    ("HOST", "host_id"), ("ID", "id"), ("TYPE", "type"), ("NAME", "name"), ("STATE", "state"),
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
DEVICE_FILTERS = ("host", "cluster", "type", "status", "kind")


def show_listing(client, args, path, key, columns):
    """GET a collection and print it as a table (or as the API's JSON)."""
    answer = client.call("GET", path(args) if callable(path) else path)
    if args.json:
        return emit_json(answer)
    print_table(answer.get(key, []), columns)
    return 0


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
            print_explanation(answer)
        return 0 if answer.get("chosen") else 1
    vm = client.call("POST", "/v1/vms", body, progress=f"creating VM {body['name']}")
    if args.json:
        return emit_json(vm)
    print(f"VM {vm['name']} is {vm.get('state')} on {vm.get('host')}")
    for device in vm.get("devices", []):
        print(f"  {device['kind']} {device['id']} ({device.get('type')})")
    return 0


def placement_body(args):
    body = {"name": args.name, "vcpus": args.vcpus, "memory_mib": args.memory_mib}
    gpus = []
    for text in args.gpu:
        model = GPU_MODEL.match(text)
        if model:
            gpus.append({"vendor_id": model[1].lower(), "device_id": model[2].lower(),
                         "count": int(model[3] or 1)})
        elif PCI_ADDRESS.match(text.lower()):
            gpus.append({"id": text})
        else:
            raise CliError(f"--gpu {text!r}: give a PCI address (0000:3b:00.0) or "
                           "vendor:device[xCOUNT] (10de:2236x2)", status=2)
    if gpus:
        body["gpus"] = gpus
    if args.usb:
        body["usb"] = [{"id": usb} for usb in args.usb]
    if args.bridge:
        body["networks"] = [{"bridge": bridge} for bridge in args.bridge]
    for name in ("host", "cluster", "anti_affinity_group", "strategy"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    if args.no_start:
        body["start"] = False
    return body


def print_explanation(answer):
    chosen = answer.get("chosen")
    print(f"placeable: {chosen} would be chosen" if chosen else "not placeable on any host")
    if answer.get("candidates"):
        print("\ncandidates (best first):")
        print_table(answer["candidates"], [
            ("HOST", "host"), ("SCORE", "score"),
            ("DEVICES", lambda c: ",".join(d["id"] for d in c.get("devices", [])))])
    if answer.get("rejected"):
        print("\nrejected:")
        print_table([{"host": host, "reason": reason}
                     for host, reasons in sorted(answer["rejected"].items())
                     for reason in reasons], [("HOST", "host"), ("REASON", "reason")])


# --- output --------------------------------------------------------------------------------
def print_table(rows, columns, out=None):
    """Columns as (heading, key or function); every column as wide as its widest cell."""
    out = out or sys.stdout
    if not rows:
        print("(none)", file=out)
        return
    cells = [[heading for heading, _ in columns]]
    for row in rows:
        cells.append([text(get(row) if callable(get) else row.get(get)) for _, get in columns])
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip(),
              file=out)


def text(value):
    if value is None or value == "":
        return "-"
    return str(value)


def short_time(iso):
    return iso.replace("T", " ")[:19] if iso else None


def emit_json(data):
    print(json.dumps(data, indent=2))
    return 0


# --- HTTP ----------------------------------------------------------------------------------
class Client:
    def __init__(self, url, token, timeout):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method, path, body=None, progress=None):
        """The answer's JSON; an API error or a transport failure becomes CliError."""
        if not self.token:
            raise CliError("no token: pass --token or set HOSTPLANE_TOKEN", status=2)
        headers = {"Authorization": f"Bearer {self.token}"}

        def send():
            return requests.request(method, self.url + path, json=body, headers=headers,
                                    timeout=self.timeout)
        try:
            response = with_progress(send, progress) if progress else send()
        except requests.RequestException as exc:
            raise CliError(f"cannot reach the controller at {self.url}: "
                           f"{type(exc).__name__}", status=2) from None
        if response.ok:
            return response.json() if response.content else {}
        raise CliError(describe_error(response))


def describe_error(response):
    """The error envelope as an operator reads it: message, code, per-host reasons."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"the controller answered {response.status_code}"
    lines = [f"{error.get('message')} ({error.get('code')}, HTTP {response.status_code})"]
    details = error.get("details") or {}
    for host, reasons in sorted((details.get("hosts") or {}).items()):
        lines += [f"  {host}: {reason}" for reason in reasons]
    other = {key: value for key, value in details.items() if key != "hosts"}
    if other:
        lines.append("  " + json.dumps(other, sort_keys=True))
    return "\n".join(lines)


def with_progress(work, label, out=None, every_s=0.5):
    """Run `work()` in a thread; meanwhile tell stderr how long it has been waiting."""
    out = out or sys.stderr
    result, failure = [], []
    thread = threading.Thread(target=lambda: _capture(work, result, failure), daemon=True)
    started = time.monotonic()
    thread.start()
    live = out.isatty()
    spinner = "|/-\\"
    ticks = 0
    while thread.is_alive():
        thread.join(every_s)
        if thread.is_alive():
            waited = time.monotonic() - started
            if live:
                out.write(f"\r{spinner[ticks % 4]} {label}... {waited:.0f}s")
            elif ticks % 10 == 0:   # logs and pipes: one line every ~5 s
                out.write(f"{label}... {waited:.0f}s\n")
            out.flush()
            ticks += 1
    if ticks:
        waited = time.monotonic() - started
        out.write(f"{chr(13) if live else ''}{label}: done in {waited:.1f}s\n")
        out.flush()
    if failure:
        raise failure[0]
    return result[0]


def _capture(work, result, failure):
    try:
        result.append(work())
    except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
        failure.append(exc)


if __name__ == "__main__":
    sys.exit(main())
