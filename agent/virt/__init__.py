"""The libvirt adapter: VMs and PCI/USB passthrough, with domain XML as the source of truth."""

from agent.virt.service import Virt

__all__ = ["Virt"]
