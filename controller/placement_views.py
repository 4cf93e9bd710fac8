"""The database as the scheduler sees it: rows of hosts, devices and VMs → scheduler views.

Read by the snapshot cache (the whole cluster, or the hosts that changed) and by a claim
(the chosen host's rows, locked). Imports nothing else of the controller but its models.
"""

from sqlalchemy import or_, select

from controller.db.models import Device, Host, Vm
from hostplane.core.numa import parse_cpulist
from hostplane.core.placement_topology import NumaNode
from hostplane.core.scheduler import DeviceView, HostView, Snapshot, VmView


def snapshot(session, host_ids=None, lock=None):
    """The cluster (or the given hosts, row-locked with `lock`) as a scheduler snapshot,
    the device rows and the host rows it was built from."""
    hosts, devices, vms, rows, host_rows = cluster_views(session, host_ids, lock)
    return Snapshot.build(hosts, devices, vms), rows, host_rows


def cluster_views(session, host_ids=None, lock=None):
    """(host views, device views, VM views, device rows, host rows) of the cluster or of
    `host_ids`."""
    hosts_q, devices_q = select(Host), select(Device)
    vms_q = select(Vm).where(or_(Vm.host_id.is_not(None), Vm.moving_to.is_not(None)))
    if host_ids is not None:
        hosts_q = hosts_q.where(Host.id.in_(host_ids))
        devices_q = devices_q.where(Device.host_id.in_(host_ids))
        vms_q = vms_q.where(or_(Vm.host_id.in_(host_ids), Vm.moving_to.in_(host_ids)))
    lock = lock or (lambda statement: statement)
    hosts = session.scalars(lock(hosts_q.order_by(Host.id))).all()
    devices = session.scalars(lock(devices_q.order_by(Device.host_id, Device.id))).all()
    vms = session.scalars(vms_q.order_by(Vm.host_id, Vm.name)).all()
    usage = usage_by_host(vms)
    seen = {host.id for host in hosts}
    return ([host_view(h, usage.get(h.id, (0, 0))) for h in hosts],
            [device_view(d) for d in devices],
            [vm_view(v) for v in vms if v.host_id in seen], devices, hosts)


def usage_by_host(vms):
    """{host id: (vCPUs, MiB)} reserved by `vms`; a moving VM counts on both its hosts."""
    usage = {}
    for vm in vms:
        for host_id in {vm.host_id, vm.moving_to} - {None}:
            cpus, memory = usage.get(host_id, (0, 0))
            usage[host_id] = (cpus + vm.vcpus, memory + vm.memory_mib)
    return usage


def host_view(host, usage=(0, 0)):
    return HostView(host.id, host.cluster, host.status, host.state, host.iommu_enabled,
                    host.iommu_ready, host.cpu_threads, host.memory_mib, usage[0], usage[1],
                    numa_nodes=numa_views(host.numa_nodes))


def numa_views(reported):
    """The agent's NUMA nodes as the scheduler weighs them: CPU threads and MiB per node
    (() when the agent reported none)."""
    return tuple(NumaNode(node["id"], len(parse_cpulist(node["cpus"])), node["memory_mib"])
                 for node in reported or ())


def device_view(device):
    return DeviceView(device.host_id, device.kind, device.id, device.type, device.vendor_id,
                      device.product_id, device.state, device.status, device.vm, device.shared,
                      device.assignable, device.iommu_group, device.usb_major, device.name,
                      device.numa_node, tuple(device.upstream or ()),
                      device.subsystem_vendor_id, device.subsystem_device_id, device.physfn)


def vm_view(vm):
    return VmView(vm.name, vm.host_id, vm.state, vm.anti_affinity_group, vm.tenant,
                  (vm.spec or {}).get("numa_node"), vm.vcpus, vm.memory_mib)

