"""One blueprint per resource: hosts, devices, vms, schedule, events, meta."""
