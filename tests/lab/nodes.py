#!/usr/bin/env python3
"""Boot and drive emulated compute nodes (QEMU, TCG) for the hostplane lab.

Why: the agent's device paths (IOMMU groups, vfio-pci, USB hot-plug, VLANs)
need a kernel that has them; the CI machine does not, so each node is a q35
guest with an emulated IOMMU and a few passthrough candidates behind PCIe root
ports.  Everything listens on 127.0.0.1 only: SSH via user-mode hostfwd, the
private L2 segment between nodes via a loopback TCP socket, QMP on a unix
socket.

CLI:  python3 tests/lab/nodes.py up --count 2
      python3 tests/lab/nodes.py ssh 0 -- lsusb
      python3 tests/lab/nodes.py down
API:  Lab(count=1).up(); lab.ssh(0, "lsusb"); lab.qmp(0, "query-status")
"""
import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_image  # noqa: E402

MEM_MB = 2048
MAX_NODES = 2  # 2 host cores; TCG uses one each
# The node with two NUMA nodes (one vCPU and half the memory each), and behind an
# expander bridge on NUMA node 1 a root port with an e1000e: a device whose numa_node
# is 1, for pinning a VM beside it.
NUMA_NODE = 1
NUMA_BUS = 0x80      # pxb-pcie's first bus number (its root port's device is on 0x81)
BOOT_TIMEOUT = 600
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10"]
# What ssh says (exit 255) when it never reached the node's sshd, so nothing ran there.
SSH_NOT_CONNECTED = ("Connection timed out", "Connection refused", "banner exchange",
                     "kex_exchange_identification", "No route to host")


def log(msg):
    print(f"[nodes] {msg}", flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QMPError(RuntimeError):
    pass


class QMP:
    """Minimal QMP client over a unix socket (stdlib only)."""

    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QMPError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, arguments=None):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            resp = self._read()
            if "event" in resp:
                self.events.append(resp)
            elif "error" in resp:
                raise QMPError(f"{command}: {resp['error'].get('desc')}")
            elif "return" in resp:
                return resp["return"]

    def wait_event(self, name, timeout=30, **data):
        """First event called name whose data has these items (seen ones too).

        E.g. wait_event("DEVICE_DELETED", device="usbstor1"): QEMU also
        reports the removal of a device's children, under other paths.
        """
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                evd = ev.get("data", {})
                if ev["event"] == name and all(evd.get(k) == v
                                               for k, v in data.items()):
                    self.events.remove(ev)
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError(f"no {name} event in {timeout}s")
            self.sock.settimeout(left)
            try:
                resp = self._read()
            except socket.timeout:
                continue
            if "event" in resp:
                self.events.append(resp)

    def close(self):
        self.sock.close()


class Lab:
    """A set of up to MAX_NODES nodes sharing one run directory."""

    def __init__(self, count=1, cache=None, rundir=None, mem_mb=MEM_MB,
                 smp=1):
        if not 1 <= count <= MAX_NODES:
            raise ValueError(f"count must be 1..{MAX_NODES}")
        self.count, self.mem_mb, self.smp = count, mem_mb, smp
        self.cache = build_image.cache_root(cache)
        self.rundir = rundir or os.path.join(self.cache, "run")
        self.state_file = os.path.join(self.rundir, "state.json")
        self.nodes = self._load_state()

    # --- state ------------------------------------------------------------
    def _load_state(self):
        try:
            with open(self.state_file) as f:
                return json.load(f)["nodes"]
        except (OSError, ValueError, KeyError):
            return []

    def _save_state(self):
        os.makedirs(self.rundir, exist_ok=True)
        with open(self.state_file, "w") as f:
            json.dump({"nodes": self.nodes}, f, indent=1)

    def node(self, n):
        if not 0 <= n < len(self.nodes):
            raise IndexError(f"node {n} is not up ({len(self.nodes)} up)")
        return self.nodes[n]

    # --- lifecycle --------------------------------------------------------
    def up(self, wait=True):
        """Build (cached) the image, start the nodes, wait for SSH."""
        if any(_alive(nd["pid"]) for nd in self.nodes):
            raise RuntimeError("nodes already up; run down first")
        image = build_image.build(self.cache)
        paths = build_image.image_paths(image)
        os.makedirs(self.rundir, exist_ok=True)
        l2_port = free_port()
        self.nodes = []
        t0 = time.monotonic()
        for n in range(self.count):
            nd = self._start(n, paths, l2_port)
            self.nodes.append(nd)
            self._save_state()
            _wait_path(nd["qmp"], 30)  # node 0 listens before node 1 connects
        if wait:
            for n in range(self.count):
                self.wait_ssh(n)
            log(f"{self.count} node(s) answer SSH after "
                f"{time.monotonic() - t0:.1f}s")
        return self

    def _start(self, n, paths, l2_port):
        d = os.path.join(self.rundir, f"node{n}")
        os.makedirs(d, exist_ok=True)
        for name in ("qmp.sock", "console.log", "qemu.log"):
            p = os.path.join(d, name)
            if os.path.exists(p):
                os.unlink(p)
        overlay = os.path.join(d, "root.qcow2")
        if os.path.exists(overlay):
            os.unlink(overlay)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                        paths["root.img"], "-F", "raw", overlay], check=True)
        for name, mb in (("nvme.img", 64), ("usb0.img", 16), ("usb1.img", 16)):
            subprocess.run(["qemu-img", "create", "-q", "-f", "raw",
                            os.path.join(d, name), f"{mb}M"], check=True)
        ssh_port = free_port()
        nd = {"index": n, "dir": d, "ssh_port": ssh_port,
              "qmp": os.path.join(d, "qmp.sock"),
              "console": os.path.join(d, "console.log"),
              "key": paths["id_ed25519"], "started": time.time()}
        l2 = (f"listen=127.0.0.1:{l2_port}" if n == 0
              else f"connect=127.0.0.1:{l2_port}")
        cmd = qemu_command(n, paths, d, ssh_port, l2, self.mem_mb, self.smp)
        with open(os.path.join(d, "cmdline.json"), "w") as f:
            json.dump(cmd, f, indent=1)
        qlog = open(os.path.join(d, "qemu.log"), "wb")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)
        qlog.close()
        nd["pid"] = proc.pid
        log(f"node{n}: pid {proc.pid}, ssh 127.0.0.1:{ssh_port}, "
            f"console {nd['console']}")
        return nd

    def wait_ssh(self, n, timeout=BOOT_TIMEOUT):
        nd = self.node(n)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not _alive(nd["pid"]):
                raise RuntimeError(f"node{n} qemu exited; see {nd['dir']}")
            r = self.ssh(n, "true", check=False, timeout=30, attempts=1)   # it loops itself
            if r.returncode == 0:
                boot = time.time() - nd["started"]
                log(f"node{n}: SSH up {boot:.1f}s after qemu start")
                return boot
            time.sleep(3)
        raise TimeoutError(f"node{n}: no SSH in {timeout}s; "
                           f"see {nd['console']}")

    def down(self):
        """Quit every node's QEMU (QMP quit, then SIGTERM/SIGKILL)."""
        for nd in self.nodes:
            pid = nd["pid"]
            if not _alive(pid):
                continue
            try:
                q = QMP(nd["qmp"], timeout=5)
                q.execute("quit")
                q.close()
            except (OSError, QMPError):
                pass
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                if _wait_gone(pid, 10):
                    break
            log(f"node{nd['index']}: stopped (pid {pid})")
        self.nodes = []
        self._save_state()

    # --- access -----------------------------------------------------------
    def ssh_argv(self, n):
        nd = self.node(n)
        return ["ssh", "-i", nd["key"], "-p", str(nd["ssh_port"])] + \
            SSH_OPTS + ["root@127.0.0.1"]

    def ssh(self, n, cmd, check=True, timeout=300, text=True, attempts=3):
        """Run cmd (string for the remote shell, or argv list) on node n.

        An ssh that never reached the node's sshd is tried again: the command did not
        run. A node busy starting a nested VM (TCG) has answered slower than
        ConnectTimeout in CI, right after the VM's create."""
        if not isinstance(cmd, str):
            cmd = shlex.join(cmd)
        argv = self.ssh_argv(n) + [cmd]
        for attempt in range(1, attempts + 1):
            done = subprocess.run(argv, capture_output=True, text=text, timeout=timeout)
            stderr = done.stderr if text else done.stderr.decode(errors="replace")
            if not (done.returncode == 255 and attempt < attempts
                    and any(sign in stderr for sign in SSH_NOT_CONNECTED)):
                break
            log(f"node{n}: ssh did not connect ({stderr.strip()[:200]}); again")
            time.sleep(3 * attempt)
        if check and done.returncode != 0:
            raise RuntimeError(f"ssh node{n} {cmd!r}: exit {done.returncode}: "
                               f"{stderr.strip()[-1000:]}")
        return done

    def fetch(self, n, remote, local):
        """Copy a file out of node n (over ssh cat)."""
        data = self.ssh(n, ["cat", remote], text=False).stdout
        with open(local, "wb") as f:
            f.write(data)
        return len(data)

    def qmp(self, n, command, arguments=None, **args):
        """One QMP command; kwargs keys get '_' turned into '-'."""
        merged = dict(arguments or {})
        merged.update({k.replace("_", "-"): v for k, v in args.items()})
        q = QMP(self.node(n)["qmp"])
        try:
            return q.execute(command, merged)
        finally:
            q.close()

    def qmp_session(self, n):
        """A connected QMP object (caller closes), e.g. to wait for events."""
        return QMP(self.node(n)["qmp"])


def qemu_command(n, paths, d, ssh_port, l2, mem_mb=MEM_MB, smp=1):
    """Argument list for one node; devices sit behind pcie-root-ports."""
    mac = f"52:54:00:4c:{n:02x}"
    dev = ["-device"]
    cmd = ["qemu-system-x86_64", "-name", f"hplab-node{n}",
           "-machine", "q35,accel=tcg", "-cpu", "max", "-m", str(mem_mb),
           "-smp", str(smp), "-nodefaults", "-display", "none",
           "-device", "intel-iommu,caching-mode=on",
           "-kernel", paths["vmlinuz"], "-initrd", paths["initrd.img"],
           "-append", "root=/dev/vda rw console=ttyS0 intel_iommu=on "
                      "iommu=pt net.ifnames=1",
           "-serial", f"file:{os.path.join(d, 'console.log')}",
           "-qmp", f"unix:{os.path.join(d, 'qmp.sock')},server=on,wait=off",
           "-pidfile", os.path.join(d, "qemu.pid"),
           "-drive", f"if=none,id=root,format=qcow2,file={d}/root.qcow2",
           "-device", "virtio-blk-pci,drive=root,bus=pcie.0,addr=0x2",
           "-netdev", f"user,id=user0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
           "-device", f"virtio-net-pci,netdev=user0,bus=pcie.0,addr=0x3,"
                      f"mac={mac}:01",
           "-netdev", f"socket,id=lab0,{l2}",
           "-device", f"virtio-net-pci,netdev=lab0,bus=pcie.0,addr=0x4,"
                      f"mac={mac}:02"]
    for i in range(1, 7):  # rp5/rp6 stay empty for PCI hot-plug
        cmd += dev + [f"pcie-root-port,id=rp{i},bus=pcie.0,chassis={i},"
                      f"port={i},addr=0x1{i - 1}"]
    if n == NUMA_NODE:
        # Both vCPUs on one host thread: the node costs the shared 2-core machine what a
        # one-vCPU node does, and a descheduled vCPU never stalls its sibling's spinlock.
        cmd[cmd.index("-machine") + 1] = "q35"
        cmd[cmd.index("-smp") + 1] = str(max(smp, 2))
        cmd += ["-accel", "tcg,thread=single"] + numa_options(mem_mb, mac)
    cmd += ["-netdev", "user,id=pt0,restrict=on",
            "-device", f"e1000e,netdev=pt0,bus=rp1,mac={mac}:03",
            "-device", "bochs-display,bus=rp2",
            "-drive", f"if=none,id=nvm0,format=raw,file={d}/nvme.img",
            "-device", f"nvme,drive=nvm0,serial=HPLAB{n}NVME0,bus=rp3",
            "-device", "qemu-xhci,id=xhci,p2=8,p3=8,bus=rp4",
            "-device", "usb-tablet,bus=xhci.0",
            "-device", "usb-kbd,bus=xhci.0",
            "-drive", f"if=none,id=usbdisk0,format=raw,file={d}/usb0.img",
            "-device", f"usb-storage,bus=xhci.0,drive=usbdisk0,id=usbstor0,"
                       f"serial=HPLAB{n}USB0"]
    return cmd


def numa_options(mem_mb, mac):
    """Two NUMA nodes of one vCPU each (the node runs -smp 2), and an e1000e behind a
    pxb-pcie on node 1, in an IOMMU group of its own."""
    half = mem_mb // 2
    return ["-object", f"memory-backend-ram,id=mem0,size={half}M",
            "-object", f"memory-backend-ram,id=mem1,size={mem_mb - half}M",
            "-numa", "node,nodeid=0,cpus=0,memdev=mem0",
            "-numa", "node,nodeid=1,cpus=1,memdev=mem1",
            "-device", f"pxb-pcie,id=pxb1,bus_nr={NUMA_BUS},numa_node=1,bus=pcie.0,"
                       "addr=0x8",
            "-device", "pcie-root-port,id=rp7,bus=pxb1,chassis=7,port=7",
            "-netdev", "user,id=pt1,restrict=on",
            "-device", f"e1000e,netdev=pt1,bus=rp7,mac={mac}:04"]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return False


def _wait_path(path, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.2)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="image cache dir")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="boot nodes and wait for SSH")
    p_up.add_argument("--count", type=int, default=1)
    p_up.add_argument("--mem", type=int, default=MEM_MB)
    p_up.add_argument("--smp", type=int, default=1)
    sub.add_parser("down", help="stop all nodes")
    sub.add_parser("status", help="show nodes")
    p_ssh = sub.add_parser("ssh", help="run a command on node N")
    p_ssh.add_argument("node", type=int)
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    p_qmp = sub.add_parser("qmp", help="QMP command with JSON arguments")
    p_qmp.add_argument("node", type=int)
    p_qmp.add_argument("command")
    p_qmp.add_argument("arguments", nargs="?", default="{}")
    args = ap.parse_args(argv)
    if args.cmd == "up":
        Lab(args.count, args.cache, mem_mb=args.mem, smp=args.smp).up()
        return 0
    lab = Lab(1, args.cache)
    if args.cmd == "down":
        lab.down()
    elif args.cmd == "status":
        for nd in lab.nodes:
            state = "running" if _alive(nd["pid"]) else "dead"
            print(f"node{nd['index']} pid={nd['pid']} {state} "
                  f"ssh=127.0.0.1:{nd['ssh_port']} dir={nd['dir']}")
    elif args.cmd == "ssh":
        command = args.command[1:] if args.command[:1] == ["--"] \
            else args.command
        # like ssh itself: the words are joined by the remote shell
        argv = lab.ssh_argv(args.node) + command
        return subprocess.run(argv).returncode
    elif args.cmd == "qmp":
        print(json.dumps(lab.qmp(args.node, args.command,
                                 json.loads(args.arguments)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
