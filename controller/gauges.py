"""Gauges of the cluster, read from the database at scrape time (so every worker agrees).

What the alert rules in deploy/prometheus/ page on: a host by host status (an alert names
the disconnected host), devices per host by status (one that turned unavailable), and
whether the database answers at all — a scrape still succeeds when it does not, saying
`hostplane_controller_database_up 0` instead of failing as a whole.
"""

import logging

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from controller.db.models import Device, Host
from controller.pools import standings
from hostplane.core.device_states import ATTACHED, READY, UNAVAILABLE

HOST_STATUSES = ("connecting", "connected", "disconnected")
DEVICE_STATUSES = (READY, ATTACHED, UNAVAILABLE)
log = logging.getLogger(__name__)


class InventoryCollector:
    def __init__(self, controller):
        self.controller = controller

    def collect(self):
        up = GaugeMetricFamily("hostplane_controller_database_up",
                               "1 when the controller's database answered this scrape")
        try:
            families = self._read()
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable: %s", getattr(exc, "orig", None) or exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self):
        hosts = GaugeMetricFamily("hostplane_controller_hosts", "Hosts", labels=["status"])
        devices = GaugeMetricFamily("hostplane_controller_devices", "Devices",
                                    labels=["type", "status"])
        host_status = GaugeMetricFamily(
            "hostplane_controller_host_status",
            "1 for each host's current status (connecting, connected, disconnected), else 0",
            labels=["host", "status"])
        host_devices = GaugeMetricFamily("hostplane_controller_host_devices",
                                         "Devices of each host by status",
                                         labels=["host", "status"])
        pools = GaugeMetricFamily("hostplane_controller_pool_devices",
                                  "Devices of each device pool by standing",
                                  labels=["pool", "standing"])
        with self.controller.db.read() as session:
            for name, counts in standings(session).items():
                for standing in ("free", "attached", "unavailable"):
                    pools.add_metric([name, standing], counts[standing])
            statuses = dict(session.execute(select(Host.id, Host.status)).all())
            per_host = {(host, status): count for host, status, count in session.execute(
                select(Device.host_id, Device.status, func.count())
                .group_by(Device.host_id, Device.status))}
            by_type = session.execute(select(Device.type, Device.status, func.count())
                                      .group_by(Device.type, Device.status)).all()
        for status in sorted(set(statuses.values())):
            hosts.add_metric([status], sum(1 for s in statuses.values() if s == status))
        for kind, status, count in by_type:
            devices.add_metric([kind, status], count)
        for host, current in sorted(statuses.items()):
            for status in HOST_STATUSES:
                host_status.add_metric([host, status], int(current == status))
            for status in DEVICE_STATUSES:
                host_devices.add_metric([host, status], per_host.get((host, status), 0))
        return [hosts, devices, host_status, host_devices, pools]
