"""The database as the scheduler sees it: rows of hosts, devices and VMs → scheduler views.

Read by the snapshot cache (the whole cluster, or the hosts that changed) and by a claim
(the chosen host's rows, locked). Imports nothing else of the controller but its models.
"""

import dataclasses
import hashlib
import os

from sqlalchemy import bindparam, or_, select, update

from controller.db.models import Device, Host, Vm, bumped
from hostplane.core.numa import parse_cpulist
from hostplane.core.placement_topology import NumaNode
from hostplane.core.scheduler import DeviceView, HostView, Snapshot, VmView

# The columns the scheduler weighs (host_view, device_view, vm_view read nothing else): the
# cache reads them for thousands of hosts, so as plain rows, without the ORM's objects or
# the columns it never looks at (a device's facts, a host's token).
HOST_FIELDS = ("id", "cluster", "status", "state", "iommu_enabled", "iommu_ready",
               "cpu_threads", "memory_mib", "numa_nodes")
DEVICE_FIELDS = ("host_id", "kind", "id", "type", "vendor_id", "product_id", "state", "status",
                 "vm", "shared", "assignable", "iommu_group", "usb_major", "name", "numa_node",
                 "upstream", "subsystem_vendor_id", "subsystem_device_id", "physfn")
VM_FIELDS = ("name", "host_id", "moving_to", "state", "anti_affinity_group", "tenant", "spec",
             "vcpus", "memory_mib")


def _columns(model, fields):
    return [model.__table__.c[field] for field in fields]


def _in_hosts(column):
    return column.in_(bindparam("host_ids", expanding=True))


# Built once: a claim and every refresh of the cache run them.
_PLACED_VMS = or_(Vm.__table__.c.host_id.is_not(None), Vm.__table__.c.moving_to.is_not(None))
_VMS_OF = or_(_in_hosts(Vm.__table__.c.host_id), _in_hosts(Vm.__table__.c.moving_to))
_ALL = (select(*_columns(Host, HOST_FIELDS)).order_by(Host.__table__.c.id),
        select(*_columns(Device, DEVICE_FIELDS)).order_by(Device.__table__.c.host_id,
                                                         Device.__table__.c.id),
        select(*_columns(Vm, VM_FIELDS)).where(_PLACED_VMS).order_by(Vm.__table__.c.host_id,
                                                                     Vm.__table__.c.name))
_SOME = (_ALL[0].where(_in_hosts(Host.__table__.c.id)),
         _ALL[1].where(_in_hosts(Device.__table__.c.host_id)),
         _ALL[2].where(_VMS_OF))
# A claim's host row, locked and read by the bump of its revision that the claim makes
# anyway (one statement where a locked read and a bump were two), with how to reach its
# agent (the caller calls it) and its revision before the claim (the cache's settle).
_HOSTS = Host.__table__
_CLAIMED_HOST = (update(_HOSTS).where(_HOSTS.c.id == bindparam("host_id"))
                 .values(revision=_HOSTS.c.revision + 1)
                 .returning(*_columns(Host, HOST_FIELDS + ("url", "token")),
                            (_HOSTS.c.revision - 1).label("revision")))
_CLAIMED_DEVICES = _ALL[1].where(Device.__table__.c.host_id == bindparam("host_id"))
_CLAIMED = {False: _CLAIMED_DEVICES, True: _CLAIMED_DEVICES.with_for_update()}
_CLAIMED_VMS = _ALL[2].where(or_(Vm.__table__.c.host_id == bindparam("host_id"),
                                 Vm.__table__.c.moving_to == bindparam("host_id")))


def snapshot(session):
    """The whole cluster as a scheduler snapshot."""
    return Snapshot.build(*cluster_views(session))


def cluster_views(session, host_ids=None):
    """(host views, device views, VM views) of the cluster or of `host_ids`."""
    connection = session.connection()   # plain statements: the ORM session adds only cost
    if host_ids is None:
        hosts, devices, vms = (connection.execute(query).all() for query in _ALL)
    else:
        ids = {"host_ids": list(host_ids)}
        hosts, devices, vms = (connection.execute(query, ids).all() for query in _SOME)
    return _views(hosts, devices, vms)


def claim_snapshot(session, locking, host_id, as_read=None):
    """The snapshot of `host_id` as a claim sees it, its rows locked (host first, its
    revision bumped; then devices when `locking`), and the host's row (None if gone), with
    its agent's url and token.

    `as_read`: (revision, (host view, devices, VMs)) of the host as a snapshot cache read
    it from the database. When the locked row still has that revision, no transaction has
    changed the host's devices or VMs since (every one that does bumps it), so those are
    taken as read instead of read again: two statements fewer for a create. The claim's
    writes check the devices' status all the same (claims.claim_on)."""
    connection = session.connection()
    host = connection.execute(_CLAIMED_HOST, {"host_id": host_id}).first()
    if host is None:
        return Snapshot.build((), (), ()), None
    bumped(session, [host_id])
    if as_read is not None and as_read[0] == host.revision:
        host_view_as_read, devices, vms = as_read[1]
        return Snapshot.build([host_view_as_read], devices, vms), host
    devices = connection.execute(_CLAIMED[locking], {"host_id": host_id}).all()
    vms = connection.execute(_CLAIMED_VMS, {"host_id": host_id}).all()
    return Snapshot.build(*_views([host], devices, vms)), host


def _views(hosts, devices, vms):
    usage = usage_by_host(vms)
    seen = {host.id for host in hosts}
    return ([host_view(h, usage.get(h.id, (0, 0))) for h in hosts],
            [device_view(d) for d in devices],
            [vm_view(v) for v in vms if v.host_id in seen])


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
                    numa_nodes=numa_views(host.numa_nodes), tie=tie_of(host.id))


# `[scheduler] tie_break`: "spread" takes hosts of equal score in an order of this
# process's own (a keyed hash of their ids), so that several controller processes do not
# all choose, and queue for the lock of, the same host; "host-id" in plain id order.
TIE_BREAKS = ("spread", "host-id")
_PROCESS_KEY = os.urandom(16)
_tie_key = [_PROCESS_KEY]


def order_ties(tie_break):
    """Set this process's order of equal-score hosts (before any snapshot is read)."""
    _tie_key[0] = _PROCESS_KEY if tie_break == "spread" else None


def tie_of(host_id):
    key = _tie_key[0]
    return "" if key is None else hashlib.blake2b(host_id.encode(), digest_size=8,
                                                  key=key).hexdigest()


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


def existing_vm_view(vm):
    """The view of a VM a claim adds devices to, with the create that made it: the claim
    checks the row it locks is still this VM (the cache's views leave it out)."""
    return dataclasses.replace(vm_view(vm), op_id=vm.op_id)

