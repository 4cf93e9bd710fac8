"""NUMA nodes of a host: the cpulist words the kernel uses, and whether a VM may be pinned.

A node is `{"id": int, "cpus": "0-15,32-47", "memory_mib": int}` as the agent reports it
in `GET /v1/host`. The agent refuses a pin that cannot run (no such node, a node without
CPUs, more memory than the node has); the scheduler asks the same question before it
chooses a node, so the two never disagree.
"""

import re

_CPULIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
MAX_CPU = 65535


def parse_cpulist(text):
    """CPU numbers of a kernel cpulist ("0-3,8,10-11" → [0, 1, 2, 3, 8, 10, 11]); an empty
    list for "" (a node with memory only). ValueError for anything else."""
    text = (text or "").strip()
    if not text:
        return []
    if not _CPULIST.match(text):
        raise ValueError(f"{text!r} is not a CPU list")
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if low > high or high > MAX_CPU:
            raise ValueError(f"{part!r} is not a CPU range")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def node_by_id(nodes, node_id):
    return next((node for node in nodes if node["id"] == node_id), None)


def pin_refusal(nodes, node_id, memory_mib):
    """(code, sentence) saying why a VM of `memory_mib` cannot be pinned to `node_id` on a
    host with `nodes`, or None when it can."""
    node = node_by_id(nodes, node_id)
    if node is None:
        known = ", ".join(str(n["id"]) for n in nodes) or "none reported"
        return "numa_node_not_found", f"this host has no NUMA node {node_id} (nodes: {known})"
    if not parse_cpulist(node["cpus"]):
        return "numa_node_without_cpus", f"NUMA node {node_id} has memory but no CPUs"
    if memory_mib > node["memory_mib"]:
        return ("numa_node_too_small", f"NUMA node {node_id} has {node['memory_mib']} MiB; "
                f"the VM asks {memory_mib} MiB")
    return None


def reported_nodes(value):
    """The agent's `numa_nodes` as the controller keeps them: well-formed nodes only
    (an older agent reports none; a malformed entry is dropped, never stored)."""
    nodes = []
    for node in value if isinstance(value, list) else ():
        try:
            parse_cpulist(node["cpus"])
            entry = {"id": node["id"], "cpus": node["cpus"], "memory_mib": node["memory_mib"]}
        except (KeyError, TypeError, ValueError):
            continue
        if all(isinstance(entry[key], int) and not isinstance(entry[key], bool)
               and entry[key] >= 0 for key in ("id", "memory_mib")):
            nodes.append(entry)
    return sorted(nodes, key=lambda node: node["id"])
