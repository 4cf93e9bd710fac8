"""Device pools (named matches on PCI devices) and the tenants each is shared with.

A pool's devices are not stored: they are whatever matches now (hostplane.core.pools),
so a device hot-plugged later is in its pool at once. A share's row is also the lock that
serialises one tenant's claims from one pool, wherever they land (controller.pools).
"""

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from controller.db.models import Base, utcnow


class DevicePool(Base):
    __tablename__ = "device_pools"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    vendor_id: Mapped[str] = mapped_column(String(4))
    device_id: Mapped[str] = mapped_column(String(4))
    subsystem_vendor_id: Mapped[str | None] = mapped_column(String(4), nullable=True)
    subsystem_device_id: Mapped[str | None] = mapped_column(String(4), nullable=True)
    type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    vf_of: Mapped[str | None] = mapped_column(String(9), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def update_match(self, match):
        """Take every field of a checked `PoolMatch` (hostplane.core.pools)."""
        self.vendor_id, self.device_id = match.vendor_id, match.device_id
        self.subsystem_vendor_id = match.subsystem_vendor_id
        self.subsystem_device_id = match.subsystem_device_id
        self.type, self.vf_of = match.type, match.vf_of


class PoolShare(Base):
    __tablename__ = "pool_shares"

    pool: Mapped[str] = mapped_column(ForeignKey("device_pools.name", ondelete="CASCADE"),
                                      primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    max_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
