"""hosts: numa_nodes, the host's NUMA nodes (id, cpus, memory_mib) as its agent reports them

Revision ID: 0007
Revises: 0005 (0006 once the device-pools migration is merged before it)
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    # Hosts known before this revision get theirs at their agent's next resync.
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('numa_nodes', sa.JSON(), nullable=False,
                                      server_default='[]'))


def downgrade():
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('numa_nodes')
