#!/usr/bin/env python3
"""Build the emulated compute-node image for the hostplane lab.

Why: IOMMU groups, vfio, USB and VLAN links do not exist on the development
and CI machines, so the agent's real paths are exercised inside QEMU (TCG)
nodes.  The node is made from Debian packages only (kernel .deb, debootstrap
root, initramfs-tools) so that it builds anywhere the Debian archive is
reachable.  Output is cached in a folder named by a hash of the build inputs:
a second run with the same inputs reuses it.

Usage: python3 tests/lab/build_image.py [--cache DIR] [--force]
Stdlib only; needs root and the host packages listed in tests/lab/README.rst.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

SCRIPT_VERSION = "4"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = "/var/cache/hostplane-lab"
KERNEL_META = "linux-image-amd64"
INITRAMFS_MODULES = ["virtio_pci", "virtio_blk", "ext4"]
PACKAGES = [
    "systemd-sysv", "udev", "kmod", "iproute2", "pciutils", "usbutils",
    "python3", "python3-venv", "openssh-server", "umockdev",
    "libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients",
    "qemu-system-x86", "initramfs-tools", "procps", "less",
    # What the Ansible roles expect to find installed (the node has no mirror):
    # python3-apt for the apt module, libvirt-daemon-system for libvirtd's units.
    "python3-apt", "libvirt-daemon-system",
    "dbus", "libpam-systemd",  # virtual deps debootstrap does not resolve
    "iputils-ping",  # the e2e test pings across VLAN and VXLAN bridges
    "tcpdump",  # the e2e test captures the management network (no token in clear)
]
# Host tools the build and the nodes need: name of binary -> Debian package.
HOST_TOOLS = {
    "debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs",
    "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils",
    "ssh": "openssh-client", "ssh-keygen": "openssh-client",
    "dpkg-deb": "dpkg", "apt-get": "apt", "zstd": "zstd", "cpio": "cpio",
}
IMAGE_EXTRA_MB = 2048  # free space in the root file system of every node
USER_NIC = "enp0s3"     # virtio-net on pcie.0 slot 3, see nodes.py
LAB_NIC = "enp0s4"      # virtio-net on pcie.0 slot 4: private L2 segment

ARTIFACTS = ["vmlinuz", "initrd.img", "root.img", "id_ed25519",
             "id_ed25519.pub", "manifest.json"]


def log(msg):
    print(f"[build_image] {msg}", flush=True)


def run(cmd, **kw):
    """Run an argument list, echoing it; raise on failure."""
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, **kw)


class Steps:
    """Times each build step and prints it, so slow steps are visible."""

    def __init__(self):
        self.times = []
        self.t0 = time.monotonic()

    def step(self, name, fn, *args):
        log(f"--- {name}")
        t = time.monotonic()
        result = fn(*args)
        dt = time.monotonic() - t
        self.times.append((name, dt))
        log(f"--- {name}: {dt:.1f}s")
        return result

    def summary(self):
        for name, dt in self.times:
            log(f"  {dt:7.1f}s  {name}")
        log(f"  {time.monotonic() - self.t0:7.1f}s  total")


def cache_root(arg=None):
    return arg or os.environ.get("HOSTPLANE_LAB_CACHE") or DEFAULT_CACHE


def missing_host_tools():
    return sorted({pkg for tool, pkg in HOST_TOOLS.items()
                   if shutil.which(tool) is None})


def resolve_kernel_package():
    """Name of the kernel package that linux-image-amd64 points at now."""
    out = subprocess.run(["apt-cache", "depends", KERNEL_META],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-6" in line:
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"cannot resolve {KERNEL_META} (run apt-get update)")


def build_inputs(kernel_pkg):
    return {"script_version": SCRIPT_VERSION, "suite": SUITE,
            "mirror": MIRROR, "packages": sorted(PACKAGES),
            "kernel": kernel_pkg, "initramfs_modules": INITRAMFS_MODULES,
            "extra_mb": IMAGE_EXTRA_MB}


def input_hash(inputs):
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def image_paths(folder):
    return {name: os.path.join(folder, name) for name in ARTIFACTS}


def is_complete(folder):
    return all(os.path.exists(p) for p in image_paths(folder).values())


# --- build steps -----------------------------------------------------------

def download_kernel(work, kernel_pkg):
    run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download",
         kernel_pkg], cwd=work)
    debs = [f for f in os.listdir(work)
            if f.startswith(kernel_pkg + "_") and f.endswith(".deb")]
    return os.path.join(work, debs[0])


def debootstrap(rootfs, debcache):
    os.makedirs(debcache, exist_ok=True)
    run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
         f"--cache-dir={debcache}", SUITE, rootfs, MIRROR],
        stdout=subprocess.DEVNULL)


def install_kernel(work, rootfs, deb):
    """Unpack the kernel .deb into the root (merged-/usr aware)."""
    stage = os.path.join(work, "kernel")
    run(["dpkg-deb", "-x", deb, stage])
    for top in ("lib", "bin", "sbin"):
        src = os.path.join(stage, top)
        if os.path.isdir(src) and os.path.islink(os.path.join(rootfs, top)):
            dst = os.path.join(stage, "usr", top)
            os.makedirs(dst, exist_ok=True)
            run(["cp", "-a", src + "/.", dst + "/"])
            shutil.rmtree(src)
    run(["cp", "-a", stage + "/.", rootfs + "/"])
    kvers = os.listdir(os.path.join(rootfs, "lib", "modules"))
    kver = sorted(kvers)[-1]
    run(["chroot", rootfs, "depmod", "-a", kver])
    return kver


def write(rootfs, path, text, mode=0o644):
    full = os.path.join(rootfs, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)
    os.chmod(full, mode)


def configure(rootfs, folder):
    """Network (networkd DHCP on the user NIC), SSH key, console, libvirt."""
    write(rootfs, "/etc/hostname", "hplab\n")
    write(rootfs, "/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 hplab\n")
    write(rootfs, "/etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    # Empty machine-id: every node generates its own at first boot (systemd
    # derives bridge MACs from it; clones sharing one cannot talk).
    write(rootfs, "/etc/machine-id", "", 0o444)
    dbus_id = os.path.join(rootfs, "var/lib/dbus/machine-id")
    if os.path.lexists(dbus_id):
        os.unlink(dbus_id)
        os.symlink("/etc/machine-id", dbus_id)
    write(rootfs, "/etc/systemd/network/10-user.network",
          f"[Match]\nName={USER_NIC}\n\n[Network]\nDHCP=ipv4\n")
    write(rootfs, "/etc/systemd/network/20-lab.network",
          f"[Match]\nName={LAB_NIC}\n\n[Link]\nRequiredForOnline=no\n\n"
          "[Network]\nLinkLocalAddressing=no\nConfigureWithoutCarrier=yes\n")
    run(["chroot", rootfs, "systemctl", "enable", "systemd-networkd"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Units that only slow a TCG boot down.
    # systemd-firstboot too: an empty machine-id means "first boot", and it
    # would prompt on the console for locale, time zone and root password.
    run(["chroot", rootfs, "systemctl", "mask",
         "systemd-networkd-wait-online.service", "e2scrub_reap.service",
         "systemd-firstboot.service"])
    # Root shell on the serial console, for debugging a node that has no SSH.
    write(rootfs, "/etc/systemd/system/serial-getty@ttyS0.service.d/auto.conf",
          "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root "
          "--keep-baud 115200,57600,38400,9600 %I $TERM\n")
    key = os.path.join(folder, "id_ed25519")
    for p in (key, key + ".pub"):
        if os.path.exists(p):
            os.unlink(p)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hostplane-lab",
         "-f", key])
    with open(key + ".pub") as f:
        write(rootfs, "/root/.ssh/authorized_keys", f.read(), 0o600)
    os.chmod(os.path.join(rootfs, "root/.ssh"), 0o700)
    write(rootfs, "/etc/ssh/sshd_config.d/lab.conf",
          "PermitRootLogin prohibit-password\nUseDNS no\n")
    # libvirt as on the machine (no systemd units enabled, no AppArmor).
    conf = os.path.join(rootfs, "etc/libvirt/qemu.conf")
    if os.path.exists(conf):
        with open(conf, "a") as f:
            f.write('\nuser = "root"\ngroup = "root"\n'
                    'security_driver = "none"\n')
    # No nested KVM: under TCG it is very slow, and libvirt (so the agent)
    # picks "kvm" when /dev/kvm exists.  Guests in the node run under TCG.
    write(rootfs, "/etc/modprobe.d/lab-no-kvm.conf",
          "blacklist kvm_intel\nblacklist kvm_amd\nblacklist kvm\n")
    # Only the listed modules (and their dependencies): a small initrd.
    write(rootfs, "/etc/initramfs-tools/modules",
          "\n".join(INITRAMFS_MODULES) + "\n")
    write(rootfs, "/etc/initramfs-tools/conf.d/lab.conf", "MODULES=list\n")


def make_initramfs(rootfs, kver):
    boot = os.path.join(rootfs, "boot")
    if not os.path.exists(os.path.join(boot, f"config-{kver}")):
        raise RuntimeError(f"config-{kver} missing in {boot}")
    run(["chroot", rootfs, "mkinitramfs", "-o", f"/boot/initrd.img-{kver}",
         kver])


def export_boot(rootfs, folder, kver):
    shutil.copy2(os.path.join(rootfs, "boot", f"vmlinuz-{kver}"),
                 os.path.join(folder, "vmlinuz"))
    shutil.copy2(os.path.join(rootfs, "boot", f"initrd.img-{kver}"),
                 os.path.join(folder, "initrd.img"))


def trim(rootfs):
    archives = os.path.join(rootfs, "var/cache/apt/archives")
    for name in os.listdir(archives):
        if name.endswith(".deb"):
            os.unlink(os.path.join(archives, name))


def make_fs(rootfs, folder):
    used = subprocess.run(["du", "-sm", rootfs], check=True,
                          capture_output=True, text=True).stdout.split()[0]
    size_mb = int(int(used) * 1.2) + IMAGE_EXTRA_MB
    img = os.path.join(folder, "root.img")
    run(["mkfs.ext4", "-q", "-F", "-L", "hplab-root", "-d", rootfs, img,
         f"{size_mb}M"])
    log(f"root.img: {size_mb} MiB file system, rootfs {used} MiB")


def prune(root, keep):
    """Drop images of older inputs (3 GB sparse each); keep debs/ and run/."""
    for name in os.listdir(root):
        base = name.split(".")[0]
        if len(base) == 16 and base != keep and \
                all(c in "0123456789abcdef" for c in base):
            log(f"removing stale image {name}")
            shutil.rmtree(os.path.join(root, name))


def build(root, force=False):
    """Return the cache folder holding a complete image; build if needed."""
    steps = Steps()
    missing = missing_host_tools()
    if missing:
        raise SystemExit("missing host packages; run: apt-get install -y "
                         "--no-install-recommends " + " ".join(missing))
    kernel_pkg = steps.step("resolve kernel", resolve_kernel_package)
    inputs = build_inputs(kernel_pkg)
    digest = input_hash(inputs)
    folder = os.path.join(root, digest)
    if is_complete(folder) and not force:
        log(f"cache hit: reusing {folder} (inputs hash {digest})")
        steps.summary()
        return folder
    log(f"cache miss: building {folder} (inputs hash {digest})")
    work = folder + ".partial"
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    rootfs = os.path.join(work, "rootfs")
    deb = steps.step("download kernel", download_kernel, work, kernel_pkg)
    steps.step("debootstrap", debootstrap, rootfs,
               os.path.join(root, "debs"))
    kver = steps.step("install kernel", install_kernel, work, rootfs, deb)
    steps.step("configure", configure, rootfs, work)
    steps.step("initramfs", make_initramfs, rootfs, kver)
    steps.step("export kernel+initrd", export_boot, rootfs, work, kver)
    steps.step("trim", trim, rootfs)
    steps.step("mkfs.ext4 -d", make_fs, rootfs, work)
    with open(os.path.join(work, "manifest.json"), "w") as f:
        json.dump(dict(inputs, kernel_version=kver, hash=digest,
                       built=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                           time.gmtime())), f, indent=1)
    shutil.rmtree(rootfs)
    shutil.rmtree(os.path.join(work, "kernel"))
    os.unlink(deb)
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.rename(work, folder)
    log(f"image ready in {folder}")
    prune(root, digest)
    steps.summary()
    return folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help=f"cache dir (default $HOSTPLANE_LAB_CACHE "
                                    f"or {DEFAULT_CACHE})")
    ap.add_argument("--force", action="store_true", help="rebuild")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("build_image.py needs root (debootstrap, chroot)")
    folder = build(cache_root(args.cache), args.force)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
