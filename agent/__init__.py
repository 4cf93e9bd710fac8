"""The hostplane host agent: inventory, VMs and passthrough, host networks."""
