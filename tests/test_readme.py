"""README.rst's quick start and examples, run as written so the README cannot rot.

In README order: the quick-start block (`./scripts/run-local --demo`, then `hostplane`
commands through the links run-local makes), every block of curl examples against the
services run-local started, the operator CLI block, then `./scripts/run-local --stop`.
Real services on loopback: the controller on SQLite, this machine's agent on
qemu:///system and the demo agent on its generated host (libvirt's test driver there,
since this machine has no GPU).

Only what cannot be shared on a machine where others run tests is changed, by the
environment run-local documents: the state directory, the three ports, where the
commands are linked (not /usr/local/bin), and setup skipped (scripts/test has set the
machine up before the suite; run here it would reinstall the shared venv).

A curl example must answer 2xx unless its line says otherwise (`# -> 409 host_exists`).
A block addressed to a real node (`node-17`: the network example, which would change this
machine's links) is left out; README says so beside it.
"""

import os
import re
import signal
import subprocess
import time

import pytest
import requests

from tests.support import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.rst")
DEFAULT_STATE = "/var/lib/hostplane/local"
EXPECTED = re.compile(r"#\s*->\s*(\d{3})\b")
# Each curl's HTTP status goes to a file, its body to stdout (so `| jq` still works).
CURL_SHIM = r'''
curl() {
  local out
  out=$(command curl -sS -w '\n%{http_code}' "$@") || return $?
  printf '%s\n' "${out%$'\n'*}"
  printf '%s\n' "${out##*$'\n'}" >> "$CURL_STATUS"
}
set -eo pipefail
'''


def literal_blocks(text):
    """Every `::` literal block of README.rst, in order, with its indentation removed."""
    lines, blocks, index = text.splitlines(), [], 0
    while index < len(lines):
        if lines[index].rstrip().endswith("::"):
            index += 1
            while index < len(lines) and not lines[index].strip():
                index += 1
            block = []
            while index < len(lines) and (not lines[index].strip()
                                          or lines[index].startswith("    ")):
                block.append(lines[index][4:])
                index += 1
            blocks.append("\n".join(block).strip("\n"))
        else:
            index += 1
    return blocks


def readme_examples():
    """(quick start, curl blocks, CLI blocks) from README.rst, in README order."""
    blocks = literal_blocks(open(README, encoding="utf-8").read())
    quick = next(b for b in blocks if b.startswith("./scripts/run-local"))
    curl = [b for b in blocks if re.search(r"^curl ", b, re.M)
            and not re.search(r"^curl .*node-17", b, re.M)]
    cli = [b for b in blocks if b.startswith("hostplane ") and b is not quick]
    return quick, curl, cli


def curl_expectations(block):
    """The status each curl of `block` must answer: its `# -> NNN`, else any 2xx."""
    return [int(m[1]) if (m := EXPECTED.search(line)) else None
            for line in block.splitlines() if line.startswith("curl ")]


@pytest.fixture
def local(tmp_path):
    if os.geteuid() != 0 or not os.path.exists(os.path.join(REPO, ".venv", "bin", "python")):
        pytest.skip("run-local needs root and the repository's .venv (scripts/setup-host)")
    ports = {"CONTROLLER_BIND": free_port(), "AGENT_BIND": free_port(),
             "DEMO_AGENT_BIND": free_port()}
    state, bin_dir = tmp_path / "state", tmp_path / "bin"
    env = {**os.environ, "HOSTPLANE_LOCAL_STATE": str(state), "HOSTPLANE_SETUP": "skip",
           "HOSTPLANE_BIN_DIR": str(bin_dir), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "CURL_STATUS": str(tmp_path / "curl-status")}
    env.update({name: f"127.0.0.1:{port}" for name, port in ports.items()})
    for name in ("HOSTPLANE_URL", "HOSTPLANE_TOKEN"):
        env.pop(name, None)
    where = {DEFAULT_STATE: str(state), "127.0.0.1:7080": env["CONTROLLER_BIND"],
             "127.0.0.1:7070": env["AGENT_BIND"], "127.0.0.1:7071": env["DEMO_AGENT_BIND"]}

    def run(script, check=True):
        for default, here in where.items():
            script = script.replace(default, here)
        done = subprocess.run(["bash", "-c", CURL_SHIM + script], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert not check or done.returncode == 0, \
            f"{script}\nexit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    try:
        yield run, state, env
    finally:
        run("./scripts/run-local --stop", check=False)
        for name in ("controller", "agent", "demo-agent"):   # never leak a daemon
            pid = _pid(state / f"{name}.pid")
            if pid:
                os.kill(pid, signal.SIGKILL)


def test_readme_quick_start_and_examples_work_as_pasted(local):
    run, state, env = local
    quick, curl_blocks, cli_blocks = readme_examples()
    assert len(curl_blocks) >= 3 and cli_blocks

    for line in quick.splitlines():
        done = run(line)
        assert done.stdout.strip(), f"{line}: printed nothing"
    listing = run("hostplane hosts").stdout
    assert "demo-gpu-server" in listing and "connected" in listing
    assert "0000:3b:00.0" in run("hostplane devices --type gpu").stdout
    for command in ("hostplane", "hostplane-agent", "hostplane-controller"):
        assert os.path.islink(os.path.join(env["HOSTPLANE_BIN_DIR"], command))

    status_file = env["CURL_STATUS"]
    assignments = []   # pasted into one shell: variables set by a block stay set
    for block in curl_blocks:
        assignments += [line for line in block.splitlines() if re.match(r"[A-Z_]+=", line)]
        open(status_file, "w").close()
        done = run("\n".join(assignments + [block]))
        statuses = [int(line) for line in open(status_file).read().split()]
        expected = curl_expectations(block)
        assert len(statuses) == len(expected), (block, done.stdout)
        for answered, wanted, line in zip(statuses, expected,
                                          [x for x in block.splitlines() if x.startswith("curl")]):
            if wanted is None:
                assert 200 <= answered < 300, f"{line}\n-> {answered}\n{done.stdout[-2000:]}"
            else:
                assert answered == wanted, f"{line}\n-> {answered}\n{done.stdout[-2000:]}"

    for block in cli_blocks:
        for line in block.splitlines():
            assert run(line).stdout.strip(), line

    for bind in (env["CONTROLLER_BIND"], env["AGENT_BIND"]):   # gunicorn's own refusals too
        too_long = requests.get(f"http://{bind}/v1/vms/{'a' * 9000}", timeout=10)
        assert too_long.status_code == 414, (bind, too_long.text[:200])
        assert too_long.json()["error"]["code"] == "uri_too_long"

    pids = {name: _pid(state / f"{name}.pid") for name in ("controller", "agent", "demo-agent")}
    assert all(pids.values()), pids
    run("./scripts/run-local --stop")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
        time.sleep(0.2)
    assert not [name for name, pid in pids.items() if _alive(pid)]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{env['CONTROLLER_BIND']}/v1/health", timeout=2)


def _pid(path):
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
