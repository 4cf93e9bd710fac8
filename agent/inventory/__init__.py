"""The host's device inventory: sysfs and udev readers, names, the live store."""
