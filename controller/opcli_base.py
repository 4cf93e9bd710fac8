"""What every `hostplane` command shares: the HTTP client, its errors, tables, JSON and
the progress line for calls that take seconds."""

import json
from functools import partial
import sys
import threading
import time

import requests

from hostplane.tables import print_table  # noqa: F401 - the commands' table printer

LOCAL_STATE = "/var/lib/hostplane/local"   # scripts/run-local's HOSTPLANE_LOCAL_STATE


class CliError(Exception):
    """Something to print on stderr and exit with `status`."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


# --- output --------------------------------------------------------------------------------
def name_verbs(verbs, names, run):
    """Verbs that take one object's name, each calling `run(client, args, verb=...)`."""
    for verb in names:
        sub = verbs.add_parser(verb)
        sub.add_argument("name")
        sub.set_defaults(run=partial(run, verb=verb))


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
            raise CliError("no token: pass --token or set HOSTPLANE_TOKEN (run-local keeps its "
                           f"admin token in {LOCAL_STATE}/admin.token)", status=2)
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
    coded = details.get("reasons") or {}
    for host, reasons in sorted((details.get("hosts") or {}).items()):
        codes = [record.get("code") for record in coded.get(host, ())]
        lines += [f"  {host}: {reason}" + (f" [{codes[n]}]" if n < len(codes) else "")
                  for n, reason in enumerate(reasons)]
    other = {key: value for key, value in details.items() if key not in ("hosts", "reasons")}
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
