"""A dropped libvirt connection is reconnected, callbacks and all (agent.virt.connection).

libvirtd on this machine is shared with other engineers, so instead of stopping it the
test puts a relay between the agent and libvirtd's real socket and cuts that: for the
agent it is exactly a daemon going away (the socket closes, new connects are refused)
and coming back, while libvirtd itself keeps running.
"""

import contextlib
import os
import select
import socket
import threading

import pytest

from agent.virt import connection
from tests.conftest import AUTH
from tests.support import wait_for
from tests.test_virt_support import (GPU, agent_client, create_vm, lv, pci_source,  # noqa: F401
                                     prefix)

LIBVIRT_SOCKET = "/var/run/libvirt/libvirt-sock"


class SocketRelay:
    """A Unix socket forwarding to libvirtd's; `cut()` drops it and every open connection."""

    def __init__(self, path):
        self.path = path
        self.pairs = []
        self.server = None

    def open(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(16)
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def cut(self):
        self.server.close()
        os.unlink(self.path)
        for pair in self.pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
        self.pairs = []

    def _accept(self, server):
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(LIBVIRT_SOCKET)
            self.pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        peers = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [])
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        return
                    peers[end].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for end in (a, b):
                with contextlib.suppress(OSError):
                    end.close()


@pytest.fixture
def relay(tmp_path):
    if not os.path.exists(LIBVIRT_SOCKET):
        pytest.skip("libvirtd's socket is not at /var/run/libvirt/libvirt-sock")
    relay = SocketRelay(str(tmp_path / "libvirt-relay.sock"))
    relay.open()
    yield relay
    with contextlib.suppress(OSError):
        relay.cut()


def test_agent_reports_libvirtd_gone_then_reconnects_with_its_event_callbacks(
        tmp_path, relay, lv, prefix, monkeypatch):  # noqa: F811
    monkeypatch.setattr(connection, "RESCAN_S", 1000.0)  # only events may update holders now
    uri = f"qemu:///system?socket={relay.path}"
    with agent_client(tmp_path, uri=uri) as (client, _):
        create_vm(client, f"{prefix}-before")
        assert client.get("/v1/health").get_json()["status"] == "ok"

        relay.cut()
        assert wait_for(lambda: client.get("/v1/health").get_json()["status"] == "degraded")
        down = client.get("/v1/vms", headers=AUTH)
        assert down.status_code == 503
        assert down.get_json()["error"]["code"] == "dependency_unavailable"
        assert client.get("/v1/host", headers=AUTH).get_json()["libvirt"]["ok"] is False

        relay.open()
        assert wait_for(lambda: client.get("/v1/health").get_json()["status"] == "ok")
        names = [vm["name"] for vm in client.get("/v1/vms", headers=AUTH).get_json()["vms"]]
        assert f"{prefix}-before" in names

        # A domain defined behind the agent's back raises a lifecycle event; the agent
        # only learns of it through the callbacks it registered again on reconnect.
        lv.defineXML(
            f"<domain type='qemu'><name>{prefix}-virsh</name><memory unit='MiB'>64</memory>"
            "<vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os><devices>"
            f"<hostdev mode='subsystem' type='pci' managed='yes'><source>{pci_source(GPU)}"
            "</source></hostdev></devices></domain>")
        assert wait_for(lambda: client.get(f"/v1/devices/pci/{GPU}", headers=AUTH)
                        .get_json()["attached_to"] == f"{prefix}-virsh", timeout=5)
        lv.lookupByName(f"{prefix}-virsh").undefine()
        assert wait_for(lambda: client.get(f"/v1/devices/pci/{GPU}", headers=AUTH)
                        .get_json()["attached_to"] is None, timeout=5)
