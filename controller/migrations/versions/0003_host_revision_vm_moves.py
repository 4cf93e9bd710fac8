"""hosts.revision (snapshot cache) and vms.moving_to (moving a stopped VM to its USB)

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('revision', sa.BigInteger(), nullable=False,
                                      server_default='0'))
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.add_column(sa.Column('moving_to', sa.String(length=128), nullable=True))


def downgrade():
    with op.batch_alter_table('vms', schema=None) as batch_op:
        batch_op.drop_column('moving_to')
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('revision')
