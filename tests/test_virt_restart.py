"""libvirtd itself restarted under a running agent: events resume, inventory stays right.

The daemon is real and is really killed and started again, but it is this test's own: a
libvirtd (with its virtlogd) in a private mount namespace whose /run/libvirt,
/var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /etc/libvirt/qemu (where
persistent definitions live) are empty tmpfs, its socket in the test's folder. So the
suite's shared daemon and its domains are never touched. The namespace outlives each
daemon, as a host does across `systemctl restart libvirtd`: the new daemon finds the
definitions and the still-running QEMU processes again.

The agent's periodic rescan is pushed far away, so after the restart only the agent's
reconnect (which reads every domain again) and the event callbacks it registers anew
can tell it anything.
"""

import contextlib
import shutil
import signal
import subprocess
import tempfile

import pytest

from agent.virt import connection
from tests.conftest import AUTH
from tests.support import wait_for
from tests.test_virt_support import (GPU, GPU_AUDIO, OTHER_GPU, RUN_PREFIX, agent_client,
                                     create_vm, libvirt_or_skip, pci_source)

PRIVATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt",
                "/etc/libvirt/qemu")


class PrivateLibvirtd:
    """A libvirtd of one test, in a mount namespace held open by a sleeping process."""

    def __init__(self, base):
        self.base = base
        self.sockets = tempfile.mkdtemp(prefix="hplv-")   # a unix socket path is short
        self.uri = f"qemu:///system?socket={self.sockets}/libvirt-sock"
        self.config = base / "libvirtd.conf"
        self.config.write_text(f'unix_sock_dir = "{self.sockets}"\nauth_unix_rw = "none"\n'
                               'auth_unix_ro = "none"\n')
        mounts = "; ".join(f"mkdir -p {d} && mount -t tmpfs tmpfs {d}" for d in PRIVATE_DIRS)
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
             f"{mounts}; echo ready; exec sleep 3600"],
            stdout=subprocess.PIPE, text=True)
        if self.holder.stdout.readline().strip() != "ready":
            pytest.skip("cannot make a private mount namespace for libvirtd here")
        self.virtlogd = self._inside(["virtlogd", "--pid-file", str(base / "virtlogd.pid")])
        self.daemon = None
        self.start()

    def _inside(self, command):
        return subprocess.Popen(["nsenter", "-t", str(self.holder.pid), "-m", "--", *command],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self):
        libvirt = libvirt_or_skip()
        self.daemon = self._inside(["libvirtd", "--config", str(self.config),
                                    "--pid-file", str(self.base / "libvirtd.pid")])

        def answers():
            with contextlib.suppress(libvirt.libvirtError):
                libvirt.open(self.uri).close()
                return True
            return False
        assert wait_for(answers, timeout=30), "the private libvirtd did not answer"

    def kill(self, signum):
        self.daemon.send_signal(signum)
        self.daemon.wait(timeout=30)

    def close(self):
        libvirt = libvirt_or_skip()
        if self.daemon.poll() is None:
            with contextlib.suppress(libvirt.libvirtError):
                conn = libvirt.open(self.uri)
                for domain in conn.listAllDomains():
                    if domain.isActive():
                        domain.destroy()     # QEMU would outlive the namespace otherwise
                conn.close()
            self.kill(signal.SIGTERM)
        for process in (self.virtlogd, self.holder):
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(self.sockets, ignore_errors=True)


@pytest.fixture
def private_libvirtd(tmp_path):
    libvirt_or_skip()
    daemon = PrivateLibvirtd(tmp_path)
    yield daemon
    daemon.close()


@pytest.mark.parametrize("how", ["crash", "restart"])
def test_libvirtd_restarted_under_the_agent_events_resume_and_inventory_is_right(
        tmp_path, private_libvirtd, monkeypatch, how):
    libvirt = libvirt_or_skip()
    monkeypatch.setattr(connection, "RESCAN_S", 1000.0)
    holder, runner, behind = (f"{RUN_PREFIX}{name}" for name in ("holder", "runner", "virsh"))
    with agent_client(tmp_path / "agent", uri=private_libvirtd.uri) as (client, _):
        create_vm(client, holder)
        answer = client.post(f"/v1/vms/{holder}/devices", headers=AUTH,
                             json={"type": "pci", "id": GPU, "with_group": True})
        assert answer.status_code == 200, answer.get_json()
        create_vm(client, runner, start=True)
        assert _states(client) == {holder: "stopped", runner: "running"}

        private_libvirtd.kill(signal.SIGKILL if how == "crash" else signal.SIGTERM)
        assert wait_for(lambda: client.get("/v1/health").get_json()["status"] == "degraded")
        down = client.get("/v1/vms", headers=AUTH)
        assert down.status_code == 503
        assert down.get_json()["error"]["code"] == "dependency_unavailable"

        private_libvirtd.start()
        assert wait_for(lambda: client.get("/v1/health").get_json()["status"] == "ok",
                        timeout=30)
        # the inventory after the restart: the running guest survived, the holder holds
        assert _states(client) == {holder: "stopped", runner: "running"}
        assert _holder(client, GPU) == holder and _holder(client, GPU_AUDIO) == holder
        # and events flow again: changes made behind the agent's back reach it
        conn = libvirt.open(private_libvirtd.uri)
        try:
            conn.lookupByName(holder).undefine()
            assert wait_for(lambda: _holder(client, GPU) is None, timeout=5)
            conn.defineXML(
                f"<domain type='qemu'><name>{behind}</name><memory unit='MiB'>64</memory>"
                "<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
                "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                f"{pci_source(OTHER_GPU)}</source></hostdev></devices></domain>")
            assert wait_for(lambda: _holder(client, OTHER_GPU) == behind, timeout=5)
            conn.lookupByName(runner).destroy()
            assert wait_for(lambda: _states(client).get(runner) == "stopped", timeout=5)
        finally:
            conn.close()


def _states(client):
    answer = client.get("/v1/vms", headers=AUTH)
    assert answer.status_code == 200, answer.get_json()
    return {vm["name"]: vm["state"] for vm in answer.get_json()["vms"]}


def _holder(client, address):
    return client.get(f"/v1/devices/pci/{address}", headers=AUTH).get_json()["attached_to"]
