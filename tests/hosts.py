"""The hosts the tests and benchmarks run against, described with `tests.synthetic`.

- `small_gpu_host()`: two NVIDIA GPUs with their audio functions, an SR-IOV NIC, an
  NVMe drive, a USB stick and a keyboard behind a hub — the everyday passthrough host.
- `q35_node()`: what QEMU's q35 machine with intel-iommu shows (the lab's node).
- `gpu_server()`: a dual-socket 8-GPU server, ~1,000 devices, for scale and benchmarks.
- `hgx_server()`: what an 8-GPU NVSwitch server shows beside its GPUs — the BMC's ASPEED
  display, six NVSwitches (class 0680, endpoint header), an Intel VMD controller with an
  NVMe drive in PCI domain 10000, a GPU newer than the system's pci.ids (B200, 10de:2901),
  PCIe link speeds. Described from public facts (ids, classes, topology of HGX A100
  boards): the real DGX captures (tests/data/captures) are udev databases, without the
  config space, IOMMU groups and link files this one has.
"""

from tests.synthetic import Host, PciFunction as F, UsbDevice as U

NVIDIA, INTEL, SAMSUNG, MELLANOX = "10de", "8086", "144d", "15b3"


def small_gpu_host():
    host = Host(usb_controller="0000:00:14.0")
    host.pci += [
        F("0000:00:00.0", INTEL, "2020", "060000", iommu_group=0),
        F("0000:00:14.0", INTEL, "a1af", "0c0330", "xhci_hcd", iommu_group=1),
        F("0000:00:17.0", INTEL, "a182", "010601", "ahci", iommu_group=2),
        F("0000:00:1f.0", INTEL, "a1c1", "060100", iommu_group=3),
    ]
    group = 10
    for root_port, gpu in (("0000:3a:00.0", "0000:3b:00"), ("0000:ae:00.0", "0000:af:00")):
        host.pci.append(F(root_port, INTEL, "2030", "060400", "pcieport", iommu_group=group))
        node = 0 if gpu.startswith("0000:3") else 1
        host.pci.append(F(f"{gpu}.0", NVIDIA, "1eb8", "030200", "nvidia", group + 1, node,
                          parent=root_port, subsystem=(NVIDIA, "12a2")))
        host.pci.append(F(f"{gpu}.1", NVIDIA, "10f8", "040300", "snd_hda_intel", group + 1,
                          node, parent=root_port, subsystem=(NVIDIA, "12a2")))
        group += 2
    host.pci.append(F("0000:17:00.0", INTEL, "2030", "060400", "pcieport", iommu_group=20))
    nic = F("0000:18:00.0", INTEL, "1593", "020000", "ice", 21, 0, parent="0000:17:00.0",
            sriov_totalvfs=64)
    host.pci.append(nic)
    for index in range(2):
        vf = F(f"0000:18:01.{index}", INTEL, "1889", "020000", "iavf", 22 + index, 0,
               parent="0000:17:00.0", physfn=nic.address)
        nic.virtfns.append(vf.address)
        host.pci.append(vf)
    host.pci.append(F("0000:5d:00.0", INTEL, "2030", "060400", "pcieport", iommu_group=30))
    host.pci.append(F("0000:5e:00.0", SAMSUNG, "a808", "010802", "nvme", 31, 0,
                      parent="0000:5d:00.0", subsystem=(SAMSUNG, "a801")))
    host.add_usb(
        U("usb1", "1d6b", "0002", "0200", "480", "Linux 6.1.0 xhci-hcd", "xHCI Host Controller",
          "0000:00:14.0", "09", 1),
        U("1-1", "05e3", "0610", "0210", "480", "GenesysLogic", "USB2.1 Hub", None, "09", 2),
        U("1-1.1", "0781", "5567", "0210", "480", "SanDisk", "Cruzer Blade", "4C530001", "00", 3),
        U("1-1.2", "046d", "c31c", "0110", "1.5", "Logitech", "USB Keyboard", None, "00", 4),
    )
    return host


def q35_node():
    """QEMU q35 + intel-iommu with devices behind pcie-root-ports (MACHINE-NOTES' node)."""
    qemu, redhat = "1234", "1b36"
    host = Host(usb_controller="0000:04:00.0",
                cmdline="root=/dev/vda rw console=ttyS0 intel_iommu=on iommu=pt")
    host.pci += [
        F("0000:00:00.0", INTEL, "29c0", "060000", iommu_group=0, subsystem=("1af4", "1100")),
        F("0000:00:1f.0", INTEL, "2918", "060100", "lpc_ich", 6, subsystem=("1af4", "1100")),
        F("0000:00:1f.2", INTEL, "2922", "010601", "ahci", 6, subsystem=("1af4", "1100")),
        F("0000:00:1f.3", INTEL, "2930", "0c0500", "i801_smbus", 6, subsystem=("1af4", "1100")),
    ]
    endpoints = [("8086", "10d3", "020000", "e1000e"), (qemu, "1111", "038000", "bochs-drm"),
                 (redhat, "0010", "010802", "nvme"), (redhat, "000d", "0c0330", "xhci_hcd")]
    for index, (vendor, device, class_code, driver) in enumerate(endpoints):
        port = f"0000:00:02.{index}"
        host.pci.append(F(port, redhat, "000c", "060400", "pcieport", 1 + index,
                          subsystem=(redhat, "0000")))
        host.pci.append(F(f"0000:{index + 1:02x}:00.0", vendor, device, class_code, driver,
                          7 + index, parent=port, subsystem=("1af4", "1100")))
    host.add_usb(
        U("usb1", "1d6b", "0002", "0200", "480", "Linux 6.1.0 xhci-hcd", "xHCI Host Controller",
          "0000:04:00.0", "09", 1),
        U("usb2", "1d6b", "0003", "0300", "5000", "Linux 6.1.0 xhci-hcd",
          "xHCI Host Controller", "0000:04:00.0", "09", 1),
        U("1-1", "0627", "0001", "0200", "480", "QEMU", "QEMU USB Tablet", "28754-0000:00:04.0-1",
          "00", 2),
        U("1-2", "0627", "0001", "0200", "480", "QEMU", "QEMU USB Keyboard",
          "68284-0000:00:04.0-2", "00", 3),
        U("1-3", "46f4", "0001", "0200", "480", "QEMU", "QEMU USB HARDDRIVE", "1-0000:00:04.0-3",
          "00", 4),
    )
    return host


def gpu_server():
    """Dual-socket, 8 GPUs (+audio) behind PCIe switches, 4 dual-port SR-IOV NICs with 64
    VFs per port, 16 NVMe drives, ~300 uncore functions, a USB tree with hubs."""
    host = Host(usb_controller="0000:00:14.0")
    group = iter(range(10_000))
    chipset = [("0000:00:00.0", "09a2", "060000", None), ("0000:00:14.0", "a1af", "0c0330", "xhci_hcd"),
               ("0000:00:17.0", "a182", "010601", "ahci"), ("0000:00:1f.0", "a1c1", "060100", "lpc_ich"),
               ("0000:00:1f.4", "a1a3", "0c0500", "i801_smbus"), ("0000:00:1f.5", "a1a4", "0c8000", None)]
    for address, device, class_code, driver in chipset:
        host.pci.append(F(address, INTEL, device, class_code, driver, next(group), 0))
    for socket in range(2):   # uncore: many system-peripheral functions per socket
        for bus in range(4):
            for dev in range(8):
                for fn in range(5):
                    host.pci.append(F(f"0000:{(0x7e, 0xfa)[socket] + bus:02x}:{dev:02x}.{fn}",
                                      INTEL, f"{0x3450 + dev * 8 + fn:04x}", "088000", None,
                                      next(group), socket))
    bus = iter(range(0x10, 0x7e))
    for gpu_index in range(8):
        socket = gpu_index // 4
        root = F(f"0000:{next(bus):02x}:00.0", INTEL, "347a", "060400", "pcieport", next(group), socket)
        up = F(f"0000:{next(bus):02x}:00.0", "10b5", "c010", "060400", "pcieport", next(group),
               socket, parent=root.address)
        host.pci += [root, up]
        for port_index in range(3):
            down = F(f"0000:{next(bus):02x}:{port_index:02x}.0", "10b5", "c010", "060400",
                     "pcieport", next(group), socket, parent=up.address)
            host.pci.append(down)
            endpoint_bus = next(bus)
            endpoint_group = next(group)
            if port_index == 0:
                host.pci.append(F(f"0000:{endpoint_bus:02x}:00.0", NVIDIA, "20b5", "030200",
                                  "nvidia" if gpu_index % 2 else "vfio-pci", endpoint_group,
                                  socket, parent=down.address, subsystem=(NVIDIA, "1533")))
                host.pci.append(F(f"0000:{endpoint_bus:02x}:00.1", NVIDIA, "1aef", "040300",
                                  "snd_hda_intel", endpoint_group, socket, parent=down.address,
                                  subsystem=(NVIDIA, "1533")))
            else:
                host.pci.append(F(f"0000:{endpoint_bus:02x}:00.0", SAMSUNG, "a824", "010802",
                                  "nvme", endpoint_group, socket, parent=down.address,
                                  subsystem=(SAMSUNG, "a80a")))
    for nic_index in range(4):
        socket = nic_index // 2
        root = F(f"0000:{0xe0 + nic_index * 4:02x}:00.0", INTEL, "347a", "060400", "pcieport",
                 next(group), socket)
        host.pci.append(root)
        nic_bus = 0xe1 + nic_index * 4
        for port in range(2):
            pf = F(f"0000:{nic_bus:02x}:00.{port}", MELLANOX, "101d", "020000", "mlx5_core",
                   next(group), socket, parent=root.address, sriov_totalvfs=127)
            host.pci.append(pf)
            for vf_index in range(64):
                slot, fn = divmod(vf_index + 8 * (port * 8 + 1), 8)
                vf = F(f"0000:{nic_bus:02x}:{slot:02x}.{fn}", MELLANOX, "101e", "020000",
                       "mlx5_core", next(group), socket, parent=root.address, physfn=pf.address)
                pf.virtfns.append(vf.address)
                host.pci.append(vf)
    host.add_usb(
        U("usb1", "1d6b", "0002", "0200", "480", "Linux xhci-hcd", "xHCI Host Controller",
          "0000:00:14.0", "09", 1),
        U("usb2", "1d6b", "0003", "0300", "10000", "Linux xhci-hcd", "xHCI Host Controller",
          "0000:00:14.0", "09", 1))
    devnum = iter(range(2, 128))
    for hub in range(1, 5):
        host.add_usb(U(f"1-{hub}", "2109", "2817", "0210", "480", "VIA Labs", "USB2.0 Hub",
                       None, "09", next(devnum)))
        for port in range(1, 5):
            host.add_usb(U(f"1-{hub}.{port}", "0781", "5583", "0300", "480", "SanDisk",
                           "Ultra Fit", f"SDX{hub}{port:02d}77", "00", next(devnum)))
    return host


def hgx_server():
    gen4 = {"current_link_speed": "16.0 GT/s PCIe", "current_link_width": "16",
            "max_link_speed": "16.0 GT/s PCIe", "max_link_width": "16"}
    host = Host(usb_controller="0000:00:14.0")
    host.pci += [
        F("0000:00:00.0", INTEL, "09a2", "060000", iommu_group=0, numa_node=0),
        F("0000:00:14.0", INTEL, "a1af", "0c0330", "xhci_hcd", 1, 0),
        F("0000:00:1f.0", INTEL, "a1c1", "060100", "lpc_ich", 2, 0),
        # the BMC: a PCIe-to-PCI bridge of ASPEED's with the AST2600 display behind it
        F("0000:00:1c.0", INTEL, "a190", "060400", "pcieport", 3, 0),
        F("0000:01:00.0", "1a03", "1150", "060400", None, 3, 0, parent="0000:00:1c.0"),
        F("0000:02:00.0", "1a03", "2000", "030000", "ast", 3, 0, parent="0000:01:00.0",
          subsystem=("1a03", "2000")),
        # Intel VMD: the drive behind it lives in domain 10000
        F("0000:00:0e.0", INTEL, "28c0", "010400", "vmd", 4, 0),
        F("10000:e0:06.0", INTEL, "464d", "060400", "pcieport", 4, 0, parent="0000:00:0e.0"),
        F("10000:e1:00.0", SAMSUNG, "a80a", "010802", "nvme", 4, 0, parent="10000:e0:06.0",
          subsystem=(SAMSUNG, "a801"), link=gen4),
    ]
    group = 10
    for index, bus in enumerate((0x07, 0x0f, 0x47, 0x4e, 0x87, 0x90, 0xb7, 0xbd)):
        node = index // 4
        port = F(f"0000:{bus - 1:02x}:00.0", INTEL, "347a", "060400", "pcieport", group, node,
                 link=gen4)
        model = "2901" if index == 7 else "20b0"      # the last one a B200, unknown to pci.ids
        gpu = F(f"0000:{bus:02x}:00.0", NVIDIA, model, "030200", "nvidia", group + 1, node,
                parent=port.address, subsystem=(NVIDIA, "134f"), link=gen4)
        host.pci += [port, gpu]
        group += 2
    for index in range(6):
        host.pci.append(F(f"0000:{0xc4 + index:02x}:00.0", NVIDIA, "1af1", "068000",
                          "nvidia-nvswitch", 40 + index, 1, subsystem=(NVIDIA, "1622")))
    host.add_usb(U("usb1", "1d6b", "0002", "0200", "480", "Linux xhci-hcd",
                   "xHCI Host Controller", "0000:00:14.0", "09", 1))
    return host
