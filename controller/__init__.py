"""The hostplane controller: host registry, device inventory, placement."""
