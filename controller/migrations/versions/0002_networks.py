"""L2 networks and their per-host apply status

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('networks',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('clusters', sa.JSON(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('pool', sa.String(length=63), nullable=True),
    sa.Column('vni', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['pool'], ['networks.name'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('pool', 'vni', name='uq_networks_pool_vni')
    )
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_networks_pool'), ['pool'], unique=False)

    op.create_table('network_hosts',
    sa.Column('network', sa.String(length=63), nullable=False),
    sa.Column('host_id', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('bridge', sa.String(length=15), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['host_id'], ['hosts.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['network'], ['networks.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('network', 'host_id')
    )


def downgrade():
    op.drop_table('network_hosts')
    with op.batch_alter_table('networks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_networks_pool'))
    op.drop_table('networks')
