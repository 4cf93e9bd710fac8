"""Host facts, including whether GPUs could be passed through (IOMMU state)."""

from flask import Blueprint, jsonify

from agent.services import current_agent
from hostplane.api import describe

bp = Blueprint("host", __name__)


@bp.get("/v1/host")
@describe("Host facts: CPU, memory, kernel, IOMMU state, NUMA nodes (numa_nodes: id, cpus "
          "as a kernel cpulist, memory_mib), libvirt and QEMU versions",
          tags=["host"])
def host():
    return jsonify(current_agent().host())
