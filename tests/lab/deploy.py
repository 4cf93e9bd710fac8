"""Deploy hostplane onto lab nodes with the project's own Ansible roles.

Why: the end-to-end lab must install the agent the way an operator does
(scripts/build-wheelhouse, ansible/site.yml over SSH), not by copying files.
The controller runs on this machine under gunicorn (no systemd here), bound
to 127.0.0.1; a node reaches it as 10.0.2.2 through QEMU user networking.
The controller reaches each agent through one extra hostfwd per node, added
at run time over QMP so nodes.py's command line stays as it is.  The agent
listens inside the node on the same port number as the forward, so one URL
(https://127.0.0.1:<port>) works from the node (the role's health check) and
from the machine (the controller).

TLS is on, as the roles deploy by default: the agents get certificates from the
cluster CA the roles make in the credentials directory, and so does the
controller here (controller_tls.yml runs the roles' CA tasks on localhost for
127.0.0.1 and 10.0.2.2), which serves HTTPS only and registers https agents only.

Lab-only role settings are extra vars (see `lab_vars`): the wheelhouse and
credentials in the lab cache, readable host ids (hplab-node<n>).  The roles'
defaults do the rest: packages baked into the image need no apt mirror.
"""
import json
import os
import secrets
import subprocess
import sys
import time

import requests

import nodes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# The venv this runs in (a clean checkout has none of its own); the code the
# controller runs is this checkout's (PYTHONPATH below), not the venv's.
VENV_BIN = os.path.dirname(sys.executable)
SLIRP_GATEWAY = "10.0.2.2"  # the machine's 127.0.0.1 as a node sees it
CLUSTER = "lab"


def log(msg):
    print(f"[deploy] {msg}", flush=True)


def venv_tool(name):
    path = os.path.join(VENV_BIN, name)
    return path if os.path.exists(path) else name


def host_id(n):
    return f"hplab-node{n}"


class Timings:
    """Named wall-clock figures, printed as they come and as a table."""

    def __init__(self):
        self.items = []

    def measure(self, name, fn, *args, **kw):
        t = time.monotonic()
        result = fn(*args, **kw)
        self.add(name, time.monotonic() - t)
        return result

    def add(self, name, seconds):
        self.items.append((name, seconds))
        print(f"[timing] {name}: {seconds:.2f}s", flush=True)

    def table(self):
        return "\n".join(f"  {s:8.2f}s  {n}" for n, s in self.items)


def build_wheelhouse(out):
    """scripts/build-wheelhouse into the lab cache (pip's cache keeps it quick)."""
    env = dict(os.environ, PYTHON=venv_tool("python"))
    subprocess.run([os.path.join(REPO, "scripts", "build-wheelhouse"), out],
                   check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def ca_path(credentials):
    """The cluster CA certificate the roles keep beside the tokens."""
    return os.path.join(credentials, "ca", "ca.crt")


class Controller:
    """The controller on this machine: SQLite in `state`, HTTPS on loopback with a
    certificate from the cluster CA in `credentials`."""

    def __init__(self, state, credentials, poll_interval_s=2, max_failures=2):
        self.state, self.credentials = state, credentials
        self.port = nodes.free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.node_url = f"https://{SLIRP_GATEWAY}:{self.port}"
        self.token = secrets.token_urlsafe(32)
        self.proc = None
        db = os.path.join(state, "controller.db")
        tls = os.path.join(credentials, "lab-controller", "controller")
        self.env = dict(os.environ, HOSTPLANE_CONTROLLER_CONFIG="/nonexistent",
                        HOSTPLANE_DATABASE_URL=f"sqlite:///{db}",
                        HOSTPLANE_SERVER_ADMIN_TOKEN=self.token,
                        HOSTPLANE_SERVER_WORKERS="1",
                        HOSTPLANE_SERVER_TLS_CERT=tls + ".crt",
                        HOSTPLANE_SERVER_TLS_KEY=tls + ".key",
                        HOSTPLANE_SERVER_REQUIRE_TLS="true",
                        HOSTPLANE_SERVER_REQUIRE_AGENT_TLS="true",
                        HOSTPLANE_AGENTS_CA=ca_path(credentials),
                        HOSTPLANE_POLL_INTERVAL_S=str(poll_interval_s),
                        HOSTPLANE_POLL_MAX_FAILURES=str(max_failures),
                        HOSTPLANE_POLL_JITTER_S="0.2", PYTHONPATH=REPO)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.token}"
        # the cluster CA only: REQUESTS_CA_BUNDLE in the environment would win
        # over a session's `verify` otherwise (as the controller itself does)
        self.session.verify, self.session.trust_env = ca_path(credentials), False

    def issue_certificate(self):
        """The roles' CA tasks on localhost: the cluster CA (made once) signs ours."""
        extra = os.path.join(self.state, "controller-tls-vars.json")
        with open(extra, "w") as f:
            json.dump({"hostplane_credentials_dir": self.credentials,
                       "lab_controller_tls_names": ["127.0.0.1", SLIRP_GATEWAY,
                                                    "localhost"]}, f)
        run_playbook("localhost,", extra, os.path.join(self.state, "controller-tls.log"),
                     os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "controller_tls.yml"))

    def start(self):
        os.makedirs(self.state, exist_ok=True)
        self.issue_certificate()
        if os.path.exists(os.path.join(self.state, "controller.db")):
            os.unlink(os.path.join(self.state, "controller.db"))
        subprocess.run([venv_tool("python"), "-m", "controller.cli", "db",
                        "upgrade"],
                       check=True, env=self.env, cwd=REPO,
                       stdout=subprocess.DEVNULL)
        logf = open(os.path.join(self.state, "controller.log"), "wb")
        # `serve` checks the TLS settings, then execs gunicorn with them
        # (one worker, eight threads, as a controller unit runs it).
        self.proc = subprocess.Popen(
            [venv_tool("python"), "-m", "controller.cli", "serve", "--bind",
             f"127.0.0.1:{self.port}"],
            env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited; see {self.state}")
            try:
                if self.session.get(self.url + "/v1/health", timeout=2).ok:
                    log(f"controller on {self.url} (pid {self.proc.pid})")
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError("controller did not answer in 60 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def call(self, method, path, expect=None, **kw):
        """One API call; with `expect`, fail loudly on any other status."""
        kw.setdefault("timeout", 120)
        answer = self.session.request(method, self.url + path, **kw)
        if expect is not None and answer.status_code != expect:
            raise AssertionError(f"{method} {path}: {answer.status_code} "
                                 f"{answer.text[:500]}")
        return answer

    def get(self, path, **kw):
        return self.call("GET", path, expect=200, **kw).json()


def forward_agent_port(lab, n):
    """Add 127.0.0.1:P -> node:P on node n's user-mode NIC; return P."""
    port = nodes.free_port()
    out = lab.qmp(n, "human-monitor-command",
                  command_line=f"hostfwd_add user0 tcp:127.0.0.1:{port}-:{port}")
    if out.strip():
        raise RuntimeError(f"hostfwd_add on node{n}: {out.strip()}")
    return port


def write_inventory(lab, agent_ports, path):
    """Per-host connection and agent settings (host vars of the ini)."""
    lines = ["[hostplane_controllers]", "", "[hostplane_agents]"]
    for n, port in enumerate(agent_ports):
        nd = lab.node(n)
        lines.append(" ".join([
            host_id(n), "ansible_host=127.0.0.1", f"ansible_port={nd['ssh_port']}",
            "ansible_user=root", f"ansible_ssh_private_key_file={nd['key']}",
            f"hostplane_agent_host_id={host_id(n)}",
            f"hostplane_agent_bind=0.0.0.0:{port}",
            f"hostplane_agent_url=https://127.0.0.1:{port}"]))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def lab_vars(controller, wheelhouse, credentials):
    """Extra vars: they outrank the playbook's group_vars/all.yml."""
    return {
        "hostplane_controller_url": controller.node_url,
        "hostplane_admin_token": controller.token,
        "hostplane_wheelhouse": wheelhouse,
        "hostplane_credentials_dir": credentials,
        "hostplane_agent_cluster": CLUSTER,
        # A VM defined and started inside an emulated node (TCG, with VFIO and NUMA
        # pinning) took 9-30 s in CI, against the default 30 s a VM operation may take.
        "hostplane_controller_operation_timeout_s": 90,
    }


def run_playbook(inventory, extra_vars, logfile,
                 playbook=os.path.join(REPO, "ansible", "site.yml")):
    env = dict(os.environ,
               ANSIBLE_CONFIG=os.path.join(REPO, "ansible", "ansible.cfg"),
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_PIPELINING="True",
               ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=120s "
                                "-o UserKnownHostsFile=/dev/null "
                                "-o StrictHostKeyChecking=no",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               # Per-task times at the end of the log: where a slow deploy goes.
               ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks")
    log(f"ansible-playbook {os.path.basename(playbook)} (full log {logfile})")
    returncode = stream_progress(
        [venv_tool("ansible-playbook"), "-i", inventory,
         "-e", "@" + extra_vars, playbook],
        logfile, env=env, cwd=os.path.join(REPO, "ansible"))
    if returncode != 0:
        with open(logfile) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"ansible-playbook failed ({returncode}); "
                           f"log {logfile}:\n{tail}")


# The playbook's lines worth seeing while it runs (the rest goes to the log only).
PROGRESS_PREFIXES = ("PLAY ", "TASK [", "RUNNING HANDLER [", "fatal:", "failed:",
                     "ERROR!", "PLAY RECAP")


def stream_progress(command, logfile, **popen):
    """Run `command`, every output line into `logfile`, the play/task lines also printed
    as they come with the seconds since start, so a long deploy is never silent."""
    started = time.monotonic()
    with open(logfile, "w") as out:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True, bufsize=1, **popen)
        for line in process.stdout:
            out.write(line)
            if line.startswith(PROGRESS_PREFIXES):
                text = line.rstrip().rstrip("*").rstrip()
                log(f"{time.strftime('%H:%M:%S')} +{time.monotonic() - started:3.0f}s {text}")
        return process.wait()


def deploy(lab, controller, timings, workdir):
    """Wheelhouse, agent forwards, inventory, playbook; return agent ports."""
    wheelhouse = timings.measure(
        "wheelhouse (scripts/build-wheelhouse)", build_wheelhouse,
        os.path.join(lab.cache, "wheelhouse"))
    ports = [forward_agent_port(lab, n) for n in range(len(lab.nodes))]
    inventory = write_inventory(lab, ports,
                                os.path.join(workdir, "inventory.ini"))
    extra = os.path.join(workdir, "lab-vars.json")
    with open(extra, "w") as f:
        json.dump(lab_vars(controller, wheelhouse,
                           os.path.join(workdir, "credentials")), f, indent=1)
    log(f"inventory {inventory}, extra vars {extra}")
    timings.measure("ansible-playbook site.yml (both nodes)", run_playbook,
                    inventory, extra, os.path.join(workdir, "ansible.log"))
    return ports


# --- a lab left running, for working on one step at a time -------------------
def state_path(lab):
    return os.path.join(lab.rundir, "e2e", "deployed.json")


def save_state(lab, controller, ports):
    with open(state_path(lab), "w") as f:
        json.dump({"controller": {"state": controller.state,
                                  "credentials": controller.credentials,
                                  "port": controller.port,
                                  "token": controller.token,
                                  "pid": controller.proc.pid},
                   "agent_ports": ports}, f, indent=1)


def load_state(lab):
    """(controller, agent ports) of a lab `deploy.py up` left running."""
    with open(state_path(lab)) as f:
        saved = json.load(f)
    c = saved["controller"]
    controller = Controller(c["state"], c["credentials"])
    controller.port, controller.token = c["port"], c["token"]
    controller.url = f"https://127.0.0.1:{c['port']}"
    controller.session.headers["Authorization"] = f"Bearer {c['token']}"
    controller.pid = c["pid"]
    return controller, saved["agent_ports"]


def main(argv):
    """up: boot, start the controller, deploy, leave running.  down: stop."""
    lab = nodes.Lab(count=2)
    if argv[1:] == ["up"]:
        lab.down()
        workdir = os.path.join(lab.rundir, "e2e")
        controller = Controller(os.path.join(workdir, "controller"),
                                os.path.join(workdir, "credentials"))
        timings = Timings()
        timings.measure("boot", lab.up)
        timings.measure("controller", controller.start)
        ports = deploy(lab, controller, timings, workdir)
        save_state(lab, controller, ports)
        print(timings.table())
        return 0
    if argv[1:] == ["down"]:
        try:
            controller, _ = load_state(lab)
            os.kill(controller.pid, 15)
            os.unlink(state_path(lab))
        except (OSError, ValueError, KeyError):
            pass
        lab.down()
        return 0
    return "usage: deploy.py up|down  (attach tests: HOSTPLANE_LAB_ATTACH=1)"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
