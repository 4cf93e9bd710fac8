"""The Ansible roles: lint-clean, harmless in --check, and the agent role run for real.

The target is a Debian 12 root built with debootstrap (cached under /var/cache), driven
with the community.general.chroot connection. Each test gets a fresh overlay of it with
/proc and a read-only /sys mounted, so the installed agent reads this machine's real
PCI devices. A chroot has no running systemd: the role enables the unit (the symlink
systemctl makes offline) but cannot start it, so the test starts the agent with the
unit's own ExecStart line inside the chroot, as systemd would, and then runs the role
again to register the host with a real controller on loopback.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess

import pytest
import requests
import yaml

from tests.test_ops_systemd import ensure_systemd_analyze
from tests.test_ops_helpers import free_port, running_controller, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSIBLE = os.path.join(REPO, "ansible")
VENV_BIN = os.path.join(REPO, ".venv/bin")
CACHE = "/var/cache/hostplane-ops"
MIRROR = "http://deb.debian.org/debian"
# What a node's image brings before the role runs: Python for Ansible's modules.
BASE_PACKAGES = ["python3", "python3-apt", "python3-venv", "systemd", "systemd-sysv",
                 "ca-certificates"]

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
    started = []
    try:
        yield {"root": root, "upper": upper, "started": started}
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
        for path in reversed(mounts):
            subprocess.run(["umount", "-l", path], check=False)


def inventory(tmp_path, node, group="hostplane_agents", **variables):
    """One node, in `group`, reached through the chroot connection."""
    settings = {"ansible_connection": "community.general.chroot",
                "ansible_host": str(node["root"]),
                "hostplane_credentials_dir": str(tmp_path / "credentials"),
                "hostplane_apt_update_cache": "false",   # no mirror: packages are in the image
                "hostplane_manage_services": "false",    # a chroot has no running systemd
                "hostplane_agent_load_modules": "false",  # would load into this machine's kernel
                **variables}
    line = "ops-node-1 " + " ".join(f"{key}={value}" for key, value in settings.items())
    path = tmp_path / "inventory.ini"
    groups = {"hostplane_controllers": "", "hostplane_agents": ""}
    groups[group] = line
    path.write_text("".join(f"[{name}]\n{hosts}\n\n" for name, hosts in groups.items()))
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


def test_agent_role_installs_a_working_agent_and_registers_it(tmp_path, node, wheelhouse):
    root = node["root"]
    agent_port = free_port()
    host_id = f"ops-node-{os.getpid()}"
    with running_controller(tmp_path) as controller:
        settings = dict(hostplane_wheelhouse=wheelhouse, hostplane_agent_iommu="intel",
                        hostplane_agent_host_id=host_id,
                        hostplane_agent_bind=f"127.0.0.1:{agent_port}",
                        hostplane_agent_url=f"http://127.0.0.1:{agent_port}",
                        hostplane_agent_cluster="gpu-a",
                        hostplane_controller_url=controller["url"],
                        hostplane_admin_token=controller["token"])
        inv = inventory(tmp_path, node, **settings, hostplane_agent_register="false")

        # 1: install, configure, enable. Nothing is running yet, so no registration.
        output, recap = playbook(inv)
        assert recap["failed"] == 0 and recap["changed"] >= 8
        assert "take effect at the next boot" in output and "Not rebooting" in output
        assert (root / "run/reboot-required").exists()
        grub = (root / "etc/default/grub.d/hostplane-iommu.cfg").read_text()
        assert 'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX intel_iommu=on iommu=pt"' in grub
        assert (root / "etc/modules-load.d/hostplane-vfio.conf").read_text().split() == \
            ["vfio", "vfio_pci", "vfio_iommu_type1"]
        config = root / "etc/hostplane/agent.toml"
        token = (tmp_path / "credentials/ops-node-1/agent_token").read_text().split()[0]
        assert len(token) == 40 and f'token = "{token}"' in config.read_text()
        assert oct(config.stat().st_mode & 0o777) == "0o600"
        wants = root / "etc/systemd/system/multi-user.target.wants/hostplane-agent.service"
        assert os.readlink(wants) == "/etc/systemd/system/hostplane-agent.service"
        verify = subprocess.run([ensure_systemd_analyze(), "verify", f"--root={root}",
                                 "hostplane-agent.service"], capture_output=True, text=True)
        assert verify.returncode == 0 and verify.stderr == "", verify.stderr

        # The installed venv is complete: its agent reads this machine's PCI devices.
        listing = subprocess.run(["chroot", str(root), "/opt/hostplane/bin/hostplane-agent",
                                  "inventory", "--compact"], capture_output=True, text=True,
                                 check=True, timeout=120)
        pci_here = sorted(os.listdir("/sys/bus/pci/devices"))
        assert sorted(d["id"] for d in json.loads(listing.stdout)["pci"]) == pci_here

        # 2: start it as its unit would, then the role registers it with the controller.
        node["started"].append(start_like_systemd(root, "hostplane-agent.service"))
        wait_for(f"http://127.0.0.1:{agent_port}/v1/health")
        inv = inventory(tmp_path, node, **settings)
        output, recap = playbook(inv)
        assert recap["changed"] == 1, output[-3000:]   # the registration, nothing else
        hosts = requests.get(controller["url"] + "/v1/hosts", headers=controller["auth"],
                             timeout=10).json()["hosts"]
        assert [(h["id"], h["cluster"], h["status"]) for h in hosts] == \
            [(host_id, "gpu-a", "connected")]
        devices = requests.get(controller["url"] + f"/v1/devices?host={host_id}",
                               headers=controller["auth"], timeout=10).json()["devices"]
        assert sorted(d["id"] for d in devices if d["type"] != "usb") == pci_here

        # 3: a rerun is a no-op; the controller already knows the host (409 host_exists).
        output, recap = playbook(inv)
        assert recap["changed"] == 0, output[-3000:]


def test_controller_role_installs_a_controller_that_serves_api_and_dashboard(
        tmp_path, node, wheelhouse):
    root = node["root"]
    port = free_port()
    inv = inventory(tmp_path, node, "hostplane_controllers", hostplane_wheelhouse=wheelhouse,
                    hostplane_controller_bind=f"127.0.0.1:{port}")
    output, recap = playbook(inv)
    assert recap["failed"] == 0 and recap["changed"] >= 6
    token = (tmp_path / "credentials/admin_token").read_text().split()[0]
    config = root / "etc/hostplane/controller.toml"
    assert f'admin_token = "{token}"' in config.read_text()
    assert 'url = "sqlite:////var/lib/hostplane/controller.db"' in config.read_text()
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    wants = root / "etc/systemd/system/multi-user.target.wants/hostplane-controller.service"
    assert wants.is_symlink()
    verify = subprocess.run([ensure_systemd_analyze(), "verify", f"--root={root}",
                             "hostplane-controller.service"], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    # hostplane[postgres]: the driver for a PostgreSQL URL is in the venv too.
    subprocess.run(["chroot", str(root), "/opt/hostplane/bin/python", "-c", "import psycopg"],
                   check=True, timeout=60)

    # As systemd would: the schema first (ExecStartPre), then gunicorn.
    (root / "var/lib/hostplane").mkdir(parents=True, exist_ok=True)   # StateDirectory=
    node["started"].append(start_like_systemd(root, "hostplane-controller.service"))
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/v1/health")
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(url + "/v1/hosts", headers=auth, timeout=10).json() == {"hosts": []}
    assert requests.get(url + "/v1/hosts", timeout=10).status_code == 401
    assert requests.get(url + "/ui/dashboard.js", headers=auth, timeout=10).status_code == 200
    assert (root / "var/lib/hostplane/controller.db").exists()

    output, recap = playbook(inv)
    assert recap["changed"] == 0, output[-3000:]


def start_like_systemd(root, unit):
    """Run the unit's ExecStartPre lines, then its ExecStart, in the chroot with its
    Environment= lines, as systemd would (without the sandboxing, which needs systemd)."""
    environ, before, command = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, [], None
    for line in (root / "etc/systemd/system" / unit).read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "Environment":
            name, _, setting = value.partition("=")
            environ[name] = setting
        elif key == "ExecStartPre":
            before.append(value.split())
        elif key == "ExecStart":
            command = value.split()
    for step in before:
        subprocess.run(["chroot", str(root), *step], env=environ, check=True,
                       capture_output=True, timeout=120)
    return subprocess.Popen(["chroot", str(root), *command], env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
