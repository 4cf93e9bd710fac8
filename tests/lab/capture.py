"""A capture of the lab's management network, to show what crosses it in clear.

Why: every controller -> agent call (the controller's poll, attach, networks) and every
agent -> controller call (events, the role's registration) crosses each node's user-mode
NIC; tcpdump there, started before the deploy and stopped after the steps, holds all of
it except SSH (Ansible's own channel, left out).  The pcap is read here with no library:
only TCP payloads are needed, to look for tokens in them.
"""
import os
import struct

import build_image

UNIT = "hplab-capture"
REMOTE = "/var/tmp/hplab-mgmt.pcap"


def start(lab, n):
    """tcpdump on node n's management NIC, as a transient unit (survives our SSH)."""
    lab.ssh(n, ["systemctl", "stop", UNIT], check=False)
    lab.ssh(n, ["systemd-run", "--unit", UNIT, "tcpdump", "-i", build_image.USER_NIC,
                "-U", "-s", "0", "-Z", "root", "-w", REMOTE, "not", "port", "22"])


def stop(lab, n, local):
    """Stop node n's capture and copy it to `local`; its TCP streams."""
    lab.ssh(n, ["systemctl", "stop", UNIT], check=False)
    lab.fetch(n, REMOTE, local)
    with open(local, "rb") as f:
        return tcp_streams(f.read())


def tcp_streams(pcap):
    """{(src, sport, dst, dport): payload bytes in capture order} of an Ethernet pcap."""
    magic = struct.unpack("<I", pcap[:4])[0]
    endian = "<" if magic in (0xa1b2c3d4, 0xa1b23c4d) else ">"
    streams, offset = {}, 24
    while offset + 16 <= len(pcap):
        caplen = struct.unpack(endian + "I", pcap[offset + 8:offset + 12])[0]
        frame = pcap[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue   # IPv4 TCP only: the management network is IPv4
        ip = frame[14:]
        ihl = (ip[0] & 0x0f) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        if total == 0 or total > len(ip):   # segmentation offload: as captured
            total = len(ip)
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack("!HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            key = (ip[12:16].hex(), sport, ip[16:20].hex(), dport)
            streams[key] = streams.get(key, b"") + payload
    return streams


def bytes_on_port(streams, port):
    return sum(len(data) for (_, sport, _, dport), data in streams.items()
               if port in (sport, dport))


def holding(streams, secret):
    """Streams whose bytes contain `secret` (as an operator grepping the capture would)."""
    needle = secret.encode()
    return [key for key, data in streams.items() if needle in data]


def local_path(workdir, n):
    return os.path.join(workdir, f"mgmt-node{n}.pcap")
