"""The controller's state: hosts, their devices, VMs. Everything else is derived."""

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow():
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    url: Mapped[str] = mapped_column(String(512))
    token: Mapped[str] = mapped_column(String(512))
    cluster: Mapped[str] = mapped_column(String(63), default="default", index=True)
    status: Mapped[str] = mapped_column(String(16), default="connecting")
    state: Mapped[str] = mapped_column(String(16), default="enabled")
    iommu_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    iommu_ready: Mapped[bool] = mapped_column(Boolean, default=False)
    hostname: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cpu_threads: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    boot_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    generation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    etag: Mapped[str | None] = mapped_column(String(128), nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    poll_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    poll_lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Device(Base):
    __tablename__ = "devices"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"),
                                         primary_key=True)
    id: Mapped[str] = mapped_column(String(160), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(32), index=True)
    vendor_id: Mapped[str] = mapped_column(String(4))
    product_id: Mapped[str] = mapped_column(String(4))
    name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="enabled")
    status: Mapped[str] = mapped_column(String(16), default="ready", index=True)
    vm: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    assignable: Mapped[bool] = mapped_column(Boolean, default=True)
    iommu_group: Mapped[int | None] = mapped_column(Integer, nullable=True)
    usb_major: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reported_vm: Mapped[str | None] = mapped_column(String(63), nullable=True)
    unavailable_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    facts: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)


class Vm(Base):
    __tablename__ = "vms"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"),
                                                nullable=True, index=True)
    tenant: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="creating")
    anti_affinity_group: Mapped[str | None] = mapped_column(String(63), nullable=True)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
