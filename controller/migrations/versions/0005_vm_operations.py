"""vms.op_id and vms.op_since: the create operation behind a VM's domain, and since when
an operation has been with its agent (creates and deletes settled by the poller)

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.add_column(sa.Column('op_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('op_since', sa.Float(), nullable=True))


def downgrade():
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.drop_column('op_since')
        batch_op.drop_column('op_id')
