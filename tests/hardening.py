"""Fuzz a running service from its own OpenAPI description with schemathesis; the agent
environment the hardening tests share.

Both services are fuzzed the same way: every operation of `/v1/openapi.json` gets
schema-valid (positive) and schema-breaking (negative) cases from schemathesis' Hypothesis
strategies, each sent over HTTP to the real gunicorn process, and each answer judged by
what an operator relies on: never a 5xx, every 4xx in the JSON error envelope, and no
token anywhere in what comes back. Problems are collected rather than raised at the first
one, so one run reports all of them with a curl line to reproduce each.

    HOSTPLANE_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_fuzz_*.py -s

runs the long version (the default, sized for CI on 2 shared cores, is 15 examples per
operation, mode and known object); `HOSTPLANE_FUZZ_SEED` replays a run (its seed is printed).
"""

import collections
import contextlib
import os
import random
import re
import subprocess

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import TOKEN
from tests.hosts import small_gpu_host
from tests.synthetic import write_proc, write_sysfs_tree

DEFAULT_EXAMPLES = 15
_PATH_PARAMETER = re.compile(r"\{[^}]+\}")


def synthetic_agent_env(tmp_path, host_id, netns="", **server):
    """Environment for a gunicorn agent on small_gpu_host, libvirt test:///default, no
    config file; `server` sets `[server]` keys (tls_cert=..., require_tls="true")."""
    host = small_gpu_host()
    env = dict(os.environ, HOSTPLANE_AGENT_CONFIG=str(tmp_path / "absent.toml"),
               HOSTPLANE_SERVER_TOKEN=TOKEN, HOSTPLANE_SERVER_WORKERS="1",
               HOSTPLANE_HOST_ID=host_id, HOSTPLANE_HOST_WATCH_UDEV="false",
               HOSTPLANE_HOST_SYSFS_ROOT=write_sysfs_tree(host, tmp_path / "sys"),
               HOSTPLANE_HOST_PROC_ROOT=write_proc(str(tmp_path / "proc"), host),
               HOSTPLANE_HOST_STATE_DIR=str(tmp_path / "state"),
               HOSTPLANE_LIBVIRT_URI="test:///default", HOSTPLANE_NETWORK_NETNS=netns)
    env.update({f"HOSTPLANE_SERVER_{key.upper()}": value for key, value in server.items()})
    return env


@contextlib.contextmanager
def private_netns(prefix="hpfuzz"):
    """A network namespace of our own with lo up (an address for a VXLAN endpoint), so
    fuzzed networks are built there and never on the machine's links."""
    name = f"{prefix}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def examples_per_operation():
    return int(os.environ.get("HOSTPLANE_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))


def run_seed():
    return int(os.environ.get("HOSTPLANE_FUZZ_SEED") or random.SystemRandom().randrange(2**32))


class FuzzReport:
    """What a run sent and every answer that broke a rule, with a curl line to replay it."""

    def __init__(self, seed_value):
        self.seed = seed_value
        self.cases = 0
        self.by_status = collections.Counter()
        self.by_operation = collections.Counter()
        self.problems = []

    def summary(self):
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(self.by_status.items()))
        return (f"{self.cases} cases over {len(self.by_operation)} operations "
                f"(seed {self.seed}); statuses {statuses}")

    def problem_lines(self, limit=15):
        return [f"{label}: {why}\n    {curl}" for label, why, curl in self.problems[:limit]]


def judge(response, secrets):
    """The rule this answer breaks, or None."""
    if response.status_code >= 500:
        return f"server error {response.status_code}: {response.text[:300]}"
    text = response.text
    for secret in secrets:
        if secret and (secret in text or any(secret in value
                                             for value in response.headers.values())):
            return f"answer carries a token (status {response.status_code})"
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            ok = (isinstance(error["code"], str) and re.fullmatch(r"[a-z0-9_]+", error["code"])
                  and isinstance(error["message"], str) and error["message"]
                  and isinstance(error["details"], dict))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            return f"{response.status_code} without the error envelope: {text[:300]!r}"
    return None


def fuzz_service(base_url, headers, secrets, examples=None, fixed_query=None, known=(),
                 rewrite=None, seed_value=None):
    """Fuzz every operation of the service at `base_url`; returns a FuzzReport.

    `fixed_query` pins query parameters per path (e.g. never ask the agent to delete disk
    files during a fuzz run). Each of `known` ({path parameter: value} naming objects
    that exist) adds a pass with those parameters pinned, so fuzzed bodies reach the
    code behind the lookup instead of stopping at a 404. `rewrite(case)` edits a case in
    place before it is sent (e.g. keep a URL the service will dial on loopback).
    """
    examples = examples or examples_per_operation()
    report = FuzzReport(run_seed() if seed_value is None else seed_value)
    document = requests.get(base_url + "/v1/openapi.json", headers=headers, timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    session = requests.Session()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in sorted(operations, key=lambda op: op.method.lower() == "delete"):
        # deletes last, so the known objects live through every other operation's pass
        label = f"{operation.method.upper()} {operation.path}"
        query = (fixed_query or {}).get(operation.path)
        names = {parameter.name for parameter in operation.path_parameters}
        pinned = [None]
        for objects in known:
            subset = {key: value for key, value in objects.items() if key in names}
            if subset and subset not in pinned:
                pinned.append(subset)
        for path_parameters in pinned:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                # the token is pinned (schemathesis would invent bearer tokens, which only
                # meet the auth check); wrong tokens are `probe_without_token`'s business
                strategy = operation.as_strategy(generation_mode=mode, query=query,
                                                 path_parameters=path_parameters,
                                                 headers=dict(headers))
                if rewrite is not None:
                    strategy = strategy.map(lambda case: rewrite(case) or case)
                _run(strategy, label, mode, examples, report, base_url, headers, secrets,
                     session)
    report.unauthenticated = probe_without_token(base_url, document, secrets, report)
    return report


def _run(strategy, label, mode, examples, report, base_url, headers, secrets, session):
    @seed(report.seed)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case):
        response = case.call(base_url=base_url, headers=headers, session=session, timeout=30)
        report.cases += 1
        report.by_status[response.status_code] += 1
        report.by_operation[label] += 1
        why = judge(response, secrets)
        if why:
            report.problems.append((f"{label} [{mode.value}]", why,
                                    case.as_curl_command(headers=headers)))

    try:
        one()
    except Unsatisfiable:
        # nothing to break: no parameters and no body (GET /v1/health in negative mode)
        if mode is not GenerationMode.NEGATIVE:
            raise


def probe_without_token(base_url, document, secrets, report):
    """Every operation not marked public, called without and with a wrong token: 401s."""
    refused = 0
    for path, operations in document["paths"].items():
        concrete = _PATH_PARAMETER.sub("x", path)
        for method, operation in operations.items():
            if operation.get("security") == []:
                continue
            for header in ({}, {"Authorization": "Bearer wrong-token"}):
                response = requests.request(method.upper(), base_url + concrete, headers=header,
                                            json={} if method in ("post", "put", "patch") else None,
                                            timeout=30)
                report.cases += 1
                report.by_status[response.status_code] += 1
                why = judge(response, secrets)
                if response.status_code != 401:
                    why = f"answered {response.status_code} without a valid token"
                if why:
                    report.problems.append((f"{method.upper()} {path} [no token]", why,
                                            f"curl -X {method.upper()} {base_url}{concrete}"))
                else:
                    refused += 1
    return refused
