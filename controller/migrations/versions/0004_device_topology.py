"""devices: not_assignable_reason, numa_node, upstream chain and PCIe link

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('not_assignable_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('numa_node', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('upstream', sa.JSON(), nullable=False,
                                      server_default='[]'))
        batch_op.add_column(sa.Column('link', sa.JSON(), nullable=True))
    # Rows written before this revision: a free device the agent called not assignable
    # is not_assignable from now on (the next poll fills the reason).
    op.execute(sa.text("UPDATE devices SET status = 'not_assignable' "
                       "WHERE status = 'ready' AND NOT assignable"))


def downgrade():
    op.execute(sa.text("UPDATE devices SET status = 'ready' WHERE status = 'not_assignable'"))
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_column('link')
        batch_op.drop_column('upstream')
        batch_op.drop_column('numa_node')
        batch_op.drop_column('not_assignable_reason')
