"""L2 networks the controller pushes to its agents, and where each one was applied.

A VXLAN network points at its pool and holds its VNI; `(pool, vni)` is unique, so even a
race the pool-row lock did not serialise can never give two networks one VNI.
"""

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from controller.db.models import Base, utcnow


class Network(Base):
    __tablename__ = "networks"
    __table_args__ = (UniqueConstraint("pool", "vni", name="uq_networks_pool_vni"),)

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    clusters: Mapped[list] = mapped_column(JSON, default=list)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)   # the kind's own fields
    pool: Mapped[str | None] = mapped_column(ForeignKey("networks.name", ondelete="RESTRICT"),
                                             nullable=True, index=True)
    vni: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class NetworkHost(Base):
    """The last push of one network to one host: applied, failed (with the agent's error)."""
    __tablename__ = "network_hosts"

    network: Mapped[str] = mapped_column(ForeignKey("networks.name", ondelete="CASCADE"),
                                         primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"),
                                         primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    bridge: Mapped[str | None] = mapped_column(String(15), nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)
