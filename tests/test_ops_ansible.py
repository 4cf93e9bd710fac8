"""The Ansible roles: lint-clean, harmless in --check, and site.yml run for real.

The target is a Debian 12 root built with debootstrap (cached under /var/cache), driven
with the community.general.chroot connection. Each test gets a fresh overlay of it with
/proc and a read-only /sys mounted. Ansible cannot reach a systemd inside a chroot, so the
roles enable the units there; then the node boots under systemd-nspawn (sharing this
machine's network and seeing its real PCI devices) and its own systemd starts libvirtd and
the hardened units, and the role runs again to register the agent with the controller.
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.test_ops_systemd import ensure_systemd_analyze
from tests.support import free_port, wait_for_url

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSIBLE = os.path.join(REPO, "ansible")
VENV_BIN = os.path.dirname(sys.executable)   # the venv running the tests
CACHE = "/var/cache/hostplane-ops"
MIRROR = "http://deb.debian.org/debian"
# What a node's image brings before the role runs: Python for Ansible's modules.
# debootstrap does not choose among alternatives, so the system bus and logind that
# libvirt-daemon-system needs (dbus-system-bus | ..., logind | ...) are named here.
BASE_PACKAGES = ["python3", "python3-apt", "python3-venv", "systemd", "systemd-sysv",
                 "ca-certificates", "dbus", "libpam-systemd"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chroot and mounts need root")


def role_packages():
    with open(os.path.join(ANSIBLE, "roles/hostplane_agent/defaults/main.yml")) as handle:
        return yaml.safe_load(handle)["hostplane_agent_packages"]


def cached_rootfs():
    """A debootstrap'd bookworm with the role's packages, built once (~4 min) and kept.

    The packages are in the image because the nodes have no internet: the role's apt task
    then finds them installed, exactly as on a node made from a prepared image.
    """
    packages = sorted(set(BASE_PACKAGES + role_packages()))
    key = hashlib.sha256(" ".join(packages).encode()).hexdigest()[:12]
    root = os.path.join(CACHE, f"rootfs-{key}")
    if not os.path.isdir(root):
        if shutil.which("debootstrap") is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True)
        building = root + ".tmp"
        shutil.rmtree(building, ignore_errors=True)
        os.makedirs(f"{CACHE}/debs", exist_ok=True)   # debootstrap will not make it
        subprocess.run(["debootstrap", "--variant=minbase", f"--cache-dir={CACHE}/debs",
                        "--include=" + ",".join(packages), "bookworm", building, MIRROR],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["chroot", building, "apt-get", "clean"], check=True)
        os.rename(building, root)
    return root


@pytest.fixture(scope="session")
def wheelhouse():
    """scripts/build-wheelhouse, run for real (pip's cache makes a rerun ~30 s)."""
    out = os.path.join(CACHE, "wheelhouse")
    os.makedirs(CACHE, exist_ok=True)
    subprocess.run([os.path.join(REPO, "scripts/build-wheelhouse"), out], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    return out


@pytest.fixture
def node(tmp_path):
    """A fresh overlay of the cached root: what the test changes vanishes afterwards."""
    os.makedirs(CACHE, exist_ok=True)
    lower = cached_rootfs()
    layers = tmp_path / "layers"
    upper, work, root = layers / "upper", layers / "work", layers / "root"
    for path in (upper, work, root):
        path.mkdir(parents=True)
    mounts = []

    def mount(*args):
        subprocess.run(["mount", *args], check=True)
        mounts.append(args[-1])

    mount("-t", "overlay", "overlay", "-o",
          f"lowerdir={lower},upperdir={upper},workdir={work}", str(root))
    mount("-t", "proc", "proc", str(root / "proc"))
    mount("-t", "sysfs", "-o", "ro", "sysfs", str(root / "sys"))
    containers = []
    try:
        yield {"root": root, "upper": upper, "containers": containers}
    finally:
        for process in containers:   # SIGTERM to nspawn: the container powers off
            process.terminate()
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for path in reversed(mounts):
            subprocess.run(["umount", "-l", path], check=False)


def inventory(tmp_path, node, groups=("hostplane_agents",), **variables):
    """One node, in `groups`, reached through the chroot connection."""
    settings = {"ansible_connection": "community.general.chroot",
                "ansible_host": str(node["root"]),
                "hostplane_credentials_dir": str(tmp_path / "credentials"),
                "hostplane_apt_update_cache": "false",   # no mirror: packages are in the image
                "hostplane_manage_services": "false",    # Ansible cannot reach the node's systemd
                "hostplane_agent_load_modules": "false",  # would load into this machine's kernel
                **variables}
    line = "ops-node-1 " + " ".join(f"{key}={value}" for key, value in settings.items())
    path = tmp_path / "inventory.ini"
    path.write_text("".join(f"[{name}]\n{line if name in groups else ''}\n\n"
                            for name in ("hostplane_controllers", "hostplane_agents")))
    return str(path)


def playbook(inventory_path, *extra):
    environ = {**os.environ, "ANSIBLE_CONFIG": os.path.join(ANSIBLE, "ansible.cfg"),
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
               "PATH": VENV_BIN + os.pathsep + os.environ["PATH"]}
    result = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory_path,
                             "site.yml", *extra], cwd=ANSIBLE, env=environ,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    recap = re.search(r"ops-node-1\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                      r"failed=(\d+)", result.stdout)
    return result.stdout, {"ok": int(recap[1]), "changed": int(recap[2]),
                           "failed": int(recap[4])}


def test_ansible_lint_is_clean():
    result = subprocess.run([os.path.join(VENV_BIN, "ansible-lint"), "--nocolor", "--offline"],
                            cwd=ANSIBLE, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ["PATH"]})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failure(s), 0 warning(s)" in result.stdout + result.stderr


@pytest.mark.timeout(900)
def test_check_mode_reports_changes_and_touches_nothing(tmp_path, node, wheelhouse):
    output, recap = playbook(inventory(tmp_path, node, hostplane_wheelhouse=wheelhouse,
                                       hostplane_agent_iommu="intel",
                                       hostplane_controller_url="http://127.0.0.1:9"),
                              "--check")
    assert recap["changed"] >= 5 and recap["failed"] == 0
    root = node["root"]
    assert not (root / "opt/hostplane/bin").exists()
    assert not (root / "etc/hostplane/agent.toml").exists()
    assert not (root / "etc/default/grub.d/hostplane-iommu.cfg").exists()


@pytest.mark.timeout(1200)
def test_site_yml_deploys_an_all_in_one_node_that_systemd_then_runs(tmp_path, node,
                                                                      wheelhouse):
    """Controller and agent roles on one node; then the node boots under systemd-nspawn
    and its own systemd starts libvirtd and both hardened units; the role registers."""
    root = node["root"]
    agent_port, controller_port = free_port(), free_port()
    host_id = f"ops-node-{os.getpid()}"
    controller = f"https://127.0.0.1:{controller_port}"
    agent = f"https://127.0.0.1:{agent_port}"
    settings = dict(hostplane_wheelhouse=wheelhouse, hostplane_agent_iommu="intel",
                    hostplane_agent_host_id=host_id, hostplane_agent_bind=f"127.0.0.1:{agent_port}",
                    hostplane_agent_url=agent, hostplane_agent_cluster="gpu-a",
                    hostplane_controller_bind=f"127.0.0.1:{controller_port}",
                    hostplane_controller_url=controller)
    groups = ("hostplane_controllers", "hostplane_agents")
    inv = inventory(tmp_path, node, groups, **settings, hostplane_agent_register="false")

    # 1: install, configure, enable. Nothing runs in a chroot, so no registration yet.
    output, recap = playbook(inv)
    assert recap["failed"] == 0 and recap["changed"] >= 12
    assert "take effect at the next boot" in output and "Not rebooting" in output
    assert (root / "run/reboot-required").exists()
    grub = (root / "etc/default/grub.d/hostplane-iommu.cfg").read_text()
    assert 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on iommu=pt"' in grub
    assert (root / "etc/modules-load.d/hostplane-vfio.conf").read_text().split() == \
        ["vfio", "vfio_pci", "vfio_iommu_type1"]
    agent_token = (tmp_path / "credentials/ops-node-1/agent_token").read_text().split()[0]
    admin_token = (tmp_path / "credentials/admin_token").read_text().split()[0]
    for name, secret in (("agent", f'token = "{agent_token}"'),
                         ("controller", f'admin_token = "{admin_token}"')):
        config = root / f"etc/hostplane/{name}.toml"
        assert secret in config.read_text() and len(secret) > 40
        assert oct(config.stat().st_mode & 0o777) == "0o600"
        unit = f"hostplane-{name}.service"
        assert os.readlink(root / "etc/systemd/system/multi-user.target.wants" / unit) == \
            f"/etc/systemd/system/{unit}"
        verify = subprocess.run([ensure_systemd_analyze(), "verify", f"--root={root}", unit],
                                capture_output=True, text=True)
        assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    subprocess.run(["chroot", str(root), "/opt/hostplane/bin/python", "-c", "import psycopg"],
                   check=True, timeout=60)   # hostplane[postgres] for a PostgreSQL URL

    # 2: boot it. systemd starts libvirtd, the controller (schema first) and the agent,
    # both over HTTPS with certificates from the cluster CA the role made.
    ca = str(tmp_path / "credentials/ca/ca.crt")
    container = boot(node)
    wait_for_url(controller + "/v1/health", timeout=180, verify=ca)
    wait_for_url(agent + "/v1/health", timeout=180, verify=ca)
    health = healthy_agent(agent, ca)   # libvirtd may still be coming up for a moment
    assert health["host_id"] == host_id and health["libvirt"]["ok"] is True, health
    for unit in ("hostplane-controller.service", "hostplane-agent.service"):
        assert unit_state(container, unit) == {"ActiveState": "active", "NRestarts": "0"}

    # 3: the role registers the running agent with the controller; nothing else changes.
    inv = inventory(tmp_path, node, groups, **settings)
    output, recap = playbook(inv)
    assert recap["changed"] == 1, output[-3000:]
    auth = {"Authorization": f"Bearer {admin_token}"}
    hosts = requests.get(controller + "/v1/hosts", headers=auth, timeout=10,
                         verify=ca).json()["hosts"]
    assert [(h["id"], h["cluster"], h["status"]) for h in hosts] == \
        [(host_id, "gpu-a", "connected")]
    devices = requests.get(controller + f"/v1/devices?host={host_id}&kind=pci", headers=auth,
                           timeout=10, verify=ca).json()["devices"]
    assert sorted(d["id"] for d in devices) == sorted(os.listdir("/sys/bus/pci/devices"))
    # The dashboard's files made it into the wheel.
    assert requests.get(controller + "/ui/dashboard.js", headers=auth, timeout=10,
                        verify=ca).ok
    with pytest.raises(requests.ConnectionError):   # clear text gets no answer at all
        requests.get(agent.replace("https:", "http:") + "/v1/devices", timeout=10)

    # 4: Restart=on-failure: a killed agent comes back with a new boot id.
    nsenter(container, "systemctl", "kill", "--signal=KILL", "hostplane-agent.service")
    deadline = time.monotonic() + 60
    while unit_state(container, "hostplane-agent.service")["NRestarts"] == "0":
        assert time.monotonic() < deadline, "systemd did not restart the killed agent"
        time.sleep(0.5)
    wait_for_url(agent + "/v1/health", timeout=120, verify=ca)
    assert requests.get(agent + "/v1/health", timeout=10,
                        verify=ca).json()["boot_id"] != health["boot_id"]

    # 5: a rerun changes nothing; the controller already knows the host (409 host_exists).
    output, recap = playbook(inv)
    assert recap["changed"] == 0, output[-3000:]


@pytest.mark.timeout(1200)
def test_tls_files_are_tight_the_ca_key_stays_home_reruns_change_nothing_and_renew(
        tmp_path, node, wheelhouse):
    """Both roles on one node in the chroot: the PKI they make and what reaches the node."""
    root, credentials = node["root"], tmp_path / "credentials"
    settings = dict(hostplane_wheelhouse=wheelhouse, hostplane_agent_register="false",
                    hostplane_agent_url="https://10.9.8.7:7070",
                    hostplane_controller_url="https://ops-ctl.example.net:7080")
    inv = inventory(tmp_path, node, ("hostplane_controllers", "hostplane_agents"), **settings)
    playbook(inv)

    # On the machine running Ansible: the CA key, private to its owner.
    assert _mode(credentials / "ca") == (0o700, os.getuid(), os.getgid())
    assert _mode(credentials / "ca/ca.key")[0] == 0o600
    assert _mode(credentials / "ops-node-1/agent.key")[0] == 0o600
    # On the node: root's, keys readable by root alone.
    tls = root / "etc/hostplane/tls"
    for name, mode in {".": 0o750, "ca.pem": 0o644, "agent.crt": 0o644, "agent.key": 0o600,
                       "controller.crt": 0o644, "controller.key": 0o600}.items():
        assert _mode(tls / name) == (mode, 0, 0), name
    assert (tls / "ca.pem").read_bytes() == (credentials / "ca/ca.crt").read_bytes()
    assert not _files_holding(node["upper"], _key_fingerprints(credentials / "ca/ca.key"))
    # ...where the same search does find the agent's own key, which belongs there
    assert _files_holding(node["upper"], _key_fingerprints(credentials / "ops-node-1/agent.key"))

    ca = x509.load_pem_x509_certificate((credentials / "ca/ca.crt").read_bytes())
    agent_cert = _certificate(tls / "agent.crt", ca)
    assert {"10.9.8.7", "ops-node-1"} <= _names(agent_cert)
    assert {"ops-ctl.example.net", "127.0.0.1", "localhost"} <= \
        _names(_certificate(tls / "controller.crt", ca))
    agent_toml = (root / "etc/hostplane/agent.toml").read_text()
    assert 'require_tls = true' in agent_toml and \
        'controller_ca = "/etc/hostplane/tls/ca.pem"' in agent_toml
    assert 'controller_url = "https://ops-ctl.example.net:7080"' in agent_toml
    controller_toml = (root / "etc/hostplane/controller.toml").read_text()
    assert "require_agent_tls = true" in controller_toml
    assert '[agents]\nca = "/etc/hostplane/tls/ca.pem"' in controller_toml
    # The installed controller finds its files servable, and how long they last.
    check = subprocess.run(["chroot", str(root), "/opt/hostplane/bin/hostplane-controller",
                            "--config", "/etc/hostplane/controller.toml", "check"],
                           capture_output=True, text=True, timeout=120)
    lines = check.stdout.splitlines()
    assert any(line.startswith("ok    tls ") for line in lines), check.stdout
    assert any(line.startswith("ok    tls expiry") and "(364 days)" in line
               for line in lines), check.stdout

    # A second run changes nothing: no new key, certificate or restart.
    output, recap = playbook(inv)
    assert recap["changed"] == 0, output[-3000:]
    assert _certificate(tls / "agent.crt", ca).serial_number == agent_cert.serial_number

    # Inside the renewal window (400 days > the 365 issued): new certificates, same keys,
    # and the services' restart handlers are called.
    agent_key = (tls / "agent.key").read_bytes()
    output, recap = playbook(inventory(tmp_path, node,
                                       ("hostplane_controllers", "hostplane_agents"),
                                       **settings, hostplane_tls_renew_days="400"))
    assert recap["changed"] >= 2, output[-3000:]
    renewed = _certificate(tls / "agent.crt", ca)
    assert renewed.serial_number != agent_cert.serial_number
    assert renewed.not_valid_after_utc > agent_cert.not_valid_after_utc
    assert (tls / "agent.key").read_bytes() == agent_key
    assert "RUNNING HANDLER [hostplane_agent : Restart hostplane-agent]" in output
    assert "RUNNING HANDLER [hostplane_controller : Restart hostplane-controller]" in output


def _mode(path):
    status = os.stat(path)
    return status.st_mode & 0o777, status.st_uid, status.st_gid


def _certificate(path, ca):
    """The certificate at `path`, checked to be signed by `ca`."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    certificate.verify_directly_issued_by(ca)
    return certificate


def _names(certificate):
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in names}


def _key_fingerprints(path):
    """Byte strings any copy of the key would contain: its PEM body and its DER form."""
    pem = path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    body = b"".join(pem.split(b"\n")[1:-2])[:48]
    return [body, key.private_bytes(serialization.Encoding.DER,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())[-48:],
            key.private_bytes(serialization.Encoding.DER,
                              serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())[7:39]]


def _files_holding(top, needles):
    """Files under `top` (what the runs wrote into the node) containing any of `needles`."""
    found = []
    for directory, _, files in os.walk(top):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                data = handle.read()
            if name == "ca.key" or any(needle in data for needle in needles):
                found.append(path)
    return found


def healthy_agent(url, ca, timeout=60):
    """The agent's health once libvirt answers it (or the last answer after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        health = requests.get(url + "/v1/health", timeout=10, verify=ca).json()
        if health["libvirt"]["ok"] or time.monotonic() > deadline:
            return health
        time.sleep(1)


def boot(node):
    """Boot the node's root under systemd-nspawn (its own PID 1, this machine's network)."""
    if shutil.which("systemd-nspawn") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "systemd-container"], check=True)
    # --keep-unit and --register=no: there is no systemd or machined on this side to ask.
    process = subprocess.Popen(["systemd-nspawn", "--quiet", "--keep-unit", "--register=no",
                                "--boot", "--console=pipe", "-D", str(node["root"])],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    node["containers"].append(process)
    deadline = time.monotonic() + 60
    while True:
        children = open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()
        if children:
            return int(children[0])
        assert process.poll() is None, "systemd-nspawn exited"
        assert time.monotonic() < deadline, "the container's init never appeared"
        time.sleep(0.2)


def nsenter(init_pid, *command):
    return subprocess.run(["nsenter", "-t", str(init_pid), "-m", "-u", "-i", "-p", "-n",
                           *command], capture_output=True, text=True, check=True, timeout=60)


def unit_state(init_pid, unit):
    shown = nsenter(init_pid, "systemctl", "show", unit, "--property=ActiveState,NRestarts")
    return dict(line.split("=", 1) for line in shown.stdout.split())
