"""device pools and their tenant shares; devices: subsystem ids and physfn

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COPIED = ('subsystem_vendor_id', 'subsystem_device_id', 'physfn')


def upgrade():
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subsystem_vendor_id', sa.String(length=4), nullable=True))
        batch_op.add_column(sa.Column('subsystem_device_id', sa.String(length=4), nullable=True))
        batch_op.add_column(sa.Column('physfn', sa.String(length=160), nullable=True))
        batch_op.create_index('ix_devices_model', ['vendor_id', 'product_id'], unique=False)
    _fill_from_facts()
    op.create_table('device_pools',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('vendor_id', sa.String(length=4), nullable=False),
    sa.Column('device_id', sa.String(length=4), nullable=False),
    sa.Column('subsystem_vendor_id', sa.String(length=4), nullable=True),
    sa.Column('subsystem_device_id', sa.String(length=4), nullable=True),
    sa.Column('type', sa.String(length=32), nullable=True),
    sa.Column('vf_of', sa.String(length=9), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('pool_shares',
    sa.Column('pool', sa.String(length=63), nullable=False),
    sa.Column('tenant', sa.String(length=63), nullable=False),
    sa.Column('max_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pool'], ['device_pools.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pool', 'tenant')
    )


def _fill_from_facts():
    """Rows written before this revision: the agent's answer kept in `facts` has them."""
    devices = sa.table('devices', sa.column('host_id'), sa.column('id'), sa.column('kind'),
                       sa.column('facts', sa.JSON()), *(sa.column(name) for name in COPIED))
    bind = op.get_bind()
    rows = bind.execute(sa.select(devices.c.host_id, devices.c.id, devices.c.facts)
                        .where(devices.c.kind == 'pci')).all()
    for host_id, device_id, facts in rows:
        values = {name: (facts or {}).get(name) for name in COPIED}
        if any(values.values()):
            bind.execute(devices.update().where(devices.c.host_id == host_id,
                                                devices.c.id == device_id).values(**values))


def downgrade():
    op.drop_table('pool_shares')
    op.drop_table('device_pools')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index('ix_devices_model')
        batch_op.drop_column('physfn')
        batch_op.drop_column('subsystem_device_id')
        batch_op.drop_column('subsystem_vendor_id')
