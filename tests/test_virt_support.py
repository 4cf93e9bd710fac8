"""Shared by the virt/VM tests: a real qemu:///system, synthetic hosts, real agent processes.

Not a test module (it holds no tests); named `test_virt_*` because that is this slice's
share of tests/. libvirtd and QEMU are real (started by scripts/start-daemons); the
host's PCI/USB devices come from a synthetic sysfs tree, because this machine has no
IOMMU, no USB and only virtio PCI devices. Every domain a test makes is named
`hp-<run>-<test>-...` and destroyed/undefined at teardown, and every agent a test starts
has `[libvirt] domain_prefix = "hp-<run>-"`: two test runs on one shared libvirtd
(whose synthetic hosts have the same PCI addresses) never see each other's domains as
holders, and nobody else's domains are ever touched.
"""

import contextlib
import os
import sys
import uuid

import pytest
import requests

from agent.app import create_app
from tests.conftest import AUTH, TOKEN, agent_config, libvirtd_running
from tests.support import free_port
from tests.support.processes import ServedProcess
from tests.synthetic import UsbDevice, small_gpu_host, write_proc, write_sysfs_tree

URI = "qemu:///system"
RUN_PREFIX = f"hp-{uuid.uuid4().hex[:6]}-"      # this pytest run's domains
GPU, GPU_AUDIO, OTHER_GPU = "0000:3b:00.0", "0000:3b:00.1", "0000:af:00.0"
STICK, KEYBOARD = "0781:5567:4C530001", "046d:c31c@1-1.2"


def libvirt_or_skip():
    libvirt = pytest.importorskip("libvirt")
    if not libvirtd_running():
        pytest.skip("libvirtd is not running (scripts/start-daemons starts it)")
    return libvirt


@pytest.fixture
def lv():
    """A raw libvirt connection: what an operator's virsh sees."""
    libvirt = libvirt_or_skip()
    conn = libvirt.open(URI)
    yield conn
    conn.close()


@pytest.fixture
def prefix(lv):
    """A per-test VM name prefix; its domains are destroyed and undefined afterwards."""
    value = f"{RUN_PREFIX}{uuid.uuid4().hex[:8]}"
    yield value
    cleanup_domains(lv, value)


def cleanup_domains(conn, prefix):
    for dom in conn.listAllDomains():
        if dom.name().startswith(prefix):
            with contextlib.suppress(Exception):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(Exception):
                dom.undefine()


def busy_host():
    """small_gpu_host plus enough USB devices to reach every per-VM limit."""
    host = small_gpu_host()
    devnum = 10
    for index in range(7):
        host.add_usb(UsbDevice(f"1-1.{3 + index}", "0951", "1666", "0210", "480", "Kingston",
                               "DataTraveler", f"KS{index:04d}", "00", devnum))
        devnum += 1
    host.add_usb(UsbDevice("1-1.10", "046d", "c077", "0110", "1.5", "Logitech", "Mouse", "M1",
                           "00", devnum))
    for index in range(5):
        host.add_usb(UsbDevice(f"2-{1 + index}", "0bda", "9210", "0320", "10000", "Realtek",
                               "NVMe enclosure", f"RT{index:04d}", "00", 2 + index))
    host.add_usb(UsbDevice("usb2", "1d6b", "0003", "0300", "10000", "Linux", "xHCI Host",
                           "0000:00:14.0", "09", 1))
    return host


def host_files(base, host=None, cmdline=None):
    """Write `host` (default small_gpu_host) as sysfs + proc under `base`."""
    host = host or small_gpu_host()
    tree = write_sysfs_tree(host, base / "sys")
    proc = write_proc(str(base / "proc"), host, cmdline=cmdline)
    return tree, proc


def config_for(base, host=None, uri=URI, cmdline=None, **libvirt_section):
    tree, proc = host_files(base, host, cmdline)
    return agent_config(base, host={"sysfs_root": tree, "proc_root": proc},
                        libvirt={"uri": uri, "storage_dir": str(base / "images"),
                                 "domain_prefix": RUN_PREFIX, **libvirt_section})


@contextlib.contextmanager
def agent_client(base, **options):
    """An in-process agent (Flask test client) on a synthetic host and a real libvirt."""
    app = create_app(config_for(base, **options))
    try:
        yield app.test_client(), app.extensions["hostplane_agent"]
    finally:
        app.extensions["hostplane_agent"].close()


def create_vm(client, name, **body):
    answer = client.post("/v1/vms", headers=AUTH, json={
        "name": name, "vcpus": 1, "memory_mib": 64, "accel": "tcg", **body})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def inactive_xml(conn, name):
    import libvirt
    return conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def holders_in_xml(conn, prefix, device_fragment):
    """Names of our domains whose live or persistent XML mentions `device_fragment`."""
    import libvirt
    found = set()
    for dom in conn.listAllDomains():
        if not dom.name().startswith(prefix):
            continue
        texts = [dom.XMLDesc(0)]
        if dom.isActive():
            texts.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        if any(device_fragment in text for text in texts):
            found.add(dom.name())
    return found


def pci_source(address):
    """How libvirt writes a PCI address inside <source>."""
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return f"<address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>"


class GunicornAgent(ServedProcess):
    """The agent as production runs it: gunicorn, 2 worker processes, on 127.0.0.1."""

    def __init__(self, base, config_text, env=None, workers=2):
        self.base = base
        self.config_path = base / "agent.toml"
        self.config_path.write_text(config_text)
        super().__init__([], {**os.environ, "HOSTPLANE_AGENT_CONFIG": str(self.config_path),
                              **(env or {})}, None)
        self.workers = workers
        self.start()

    def start(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / f"gunicorn-{self.port}.log"
        self.command = [sys.executable, "-m", "gunicorn", "-w", str(self.workers), "--threads",
                        "8", "-b", f"127.0.0.1:{self.port}", "--timeout", "120",
                        "agent.app:create_app()"]
        self.spawn()
        self.wait_answering("the agent", self._answers, timeout=30)

    def _answers(self):
        try:
            return requests.get(f"{self.url}/v1/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def call(self, method, path, **kwargs):
        return requests.request(method, self.url + path, headers=AUTH, timeout=60, **kwargs)


def toml_config(base, host=None, uri=URI, cmdline=None):
    tree, proc = host_files(base, host, cmdline)
    state = base / "state"
    return (f'[server]\ntoken = "{TOKEN}"\n\n[libvirt]\nuri = "{uri}"\n'
            f'storage_dir = "{base / "images"}"\ndomain_prefix = "{RUN_PREFIX}"\n\n'
            f'[host]\nid = "test-host"\nsysfs_root = "{tree}"\nproc_root = "{proc}"\n'
            f'state_dir = "{state}"\nwatch_udev = false\n\n[network]\nnetns = ""\n')
