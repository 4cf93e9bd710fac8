"""Host L2 networks through netlink (pyroute2); the pure model is hostplane.core.networks."""

from agent.net.networks import HostNetworks

__all__ = ["HostNetworks"]
