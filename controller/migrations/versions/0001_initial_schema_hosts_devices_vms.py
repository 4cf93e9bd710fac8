"""initial schema: hosts, devices, vms

Revision ID: 0001
Revises: 
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('hosts',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('url', sa.String(length=512), nullable=False),
    sa.Column('token', sa.String(length=512), nullable=False),
    sa.Column('cluster', sa.String(length=63), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('iommu_enabled', sa.Boolean(), nullable=False),
    sa.Column('iommu_ready', sa.Boolean(), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=True),
    sa.Column('cpu_threads', sa.Integer(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=False),
    sa.Column('boot_id', sa.String(length=64), nullable=True),
    sa.Column('generation', sa.Integer(), nullable=True),
    sa.Column('etag', sa.String(length=128), nullable=True),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=True),
    sa.Column('poll_owner', sa.String(length=64), nullable=True),
    sa.Column('poll_lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hosts_cluster'), ['cluster'], unique=False)

    op.create_table('devices',
    sa.Column('host_id', sa.String(length=128), nullable=False),
    sa.Column('id', sa.String(length=160), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('vendor_id', sa.String(length=4), nullable=False),
    sa.Column('product_id', sa.String(length=4), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('vm', sa.String(length=63), nullable=True),
    sa.Column('shared', sa.Boolean(), nullable=False),
    sa.Column('assignable', sa.Boolean(), nullable=False),
    sa.Column('iommu_group', sa.Integer(), nullable=True),
    sa.Column('usb_major', sa.Integer(), nullable=True),
    sa.Column('reported_vm', sa.String(length=63), nullable=True),
    sa.Column('unavailable_reason', sa.String(length=255), nullable=True),
    sa.Column('facts', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('host_id', 'id')
    )
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_devices_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_devices_type'), ['type'], unique=False)
        batch_op.create_index(batch_op.f('ix_devices_vm'), ['vm'], unique=False)

    op.create_table('vms',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('host_id', sa.String(length=128), nullable=True),
    sa.Column('tenant', sa.String(length=63), nullable=True),
    sa.Column('vcpus', sa.Integer(), nullable=False),
    sa.Column('memory_mib', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('anti_affinity_group', sa.String(length=63), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vms_host_id'), ['host_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_vms_tenant'), ['tenant'], unique=False)



def downgrade():
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vms_tenant'))
        batch_op.drop_index(batch_op.f('ix_vms_host_id'))

    op.drop_table('vms')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_devices_vm'))
        batch_op.drop_index(batch_op.f('ix_devices_type'))
        batch_op.drop_index(batch_op.f('ix_devices_status'))

    op.drop_table('devices')
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hosts_cluster'))

    op.drop_table('hosts')
