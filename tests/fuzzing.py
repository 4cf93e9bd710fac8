"""Fuzz a running service from its own OpenAPI description with schemathesis.

Both services are fuzzed the same way: every operation of `/v1/openapi.json` gets
schema-valid (positive) and schema-breaking (negative) cases from schemathesis' Hypothesis
strategies, each sent over HTTP to the real gunicorn process, and each answer judged by
what an operator relies on: never a 5xx, every 4xx in the JSON error envelope, and no
token anywhere in what comes back. Problems are collected rather than raised at the first
one, so one run reports all of them with a curl line to reproduce each.

    HOSTPLANE_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/test_fuzz_agent.py -s

runs the long version (the default, sized for CI, is 25 per operation and mode);
`HOSTPLANE_FUZZ_SEED` replays a run (its seed is printed).
"""

import collections
import os
import random
import re

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

DEFAULT_EXAMPLES = 25
_PATH_PARAMETER = re.compile(r"\{[^}]+\}")


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
                 seed_value=None):
    """Fuzz every operation of the service at `base_url`; returns a FuzzReport.

    `fixed_query` pins query parameters per path (e.g. never ask the agent to delete disk
    files during a fuzz run). Each of `known` ({path parameter: value} naming objects
    that exist) adds a pass with those parameters pinned, so fuzzed bodies reach the
    code behind the lookup instead of stopping at a 404.
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
        pinned = [None] + [{key: value for key, value in objects.items() if key in names}
                           for objects in known if names & set(objects)]
        for path_parameters in pinned:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                strategy = operation.as_strategy(generation_mode=mode, query=query,
                                                 path_parameters=path_parameters)
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
