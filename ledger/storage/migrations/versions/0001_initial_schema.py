"""Initial schema: identities and revisions, meters, usage events and buckets, the change feed.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Self-contained on purpose: the column types are spelled out here rather than imported from the
models, so later changes to the models cannot change what this revision creates.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import uuid

from alembic import op

# Aware instants: timestamptz on PostgreSQL, fixed-width ISO text on SQLite.
INSTANT = sa.DateTime(timezone=True).with_variant(sa.String(27), "sqlite")
# Exact amounts: unconstrained NUMERIC on PostgreSQL, canonical decimal text on SQLite.
AMOUNT = sa.Numeric().with_variant(sa.String(80), "sqlite")
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('feed',
    sa.Column('position', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=False),
    sa.Column('contract_version', sa.SmallInteger(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('recorded_at', INSTANT, nullable=False),
    sa.PrimaryKeyConstraint('position', name=op.f('pk_feed'))
    )
    with op.batch_alter_table('feed', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feed_namespace_position'), ['namespace', 'position'], unique=False)

    op.create_table('ledger_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.String(length=26), nullable=False),
    sa.Column('feed_position', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_ledger_state_single_row')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_state'))
    )
    state = sa.table(
        "ledger_state", sa.column("id"), sa.column("epoch"), sa.column("feed_position")
    )
    op.bulk_insert(state, [{"id": 1, "epoch": uuid.uuid4().hex[:26].upper(), "feed_position": 0}])
    op.create_table('resources',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('created_at', INSTANT, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_resources')),
    sa.UniqueConstraint('namespace', 'kind', 'name', name=op.f('uq_resources_namespace_kind_name'))
    )
    op.create_table('usage_events',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=False),
    sa.Column('source', sa.String(length=253), nullable=False),
    sa.Column('event_id', sa.String(length=253), nullable=False),
    sa.Column('event_type', sa.String(length=253), nullable=False),
    sa.Column('subject', sa.String(length=253), nullable=False),
    sa.Column('time', INSTANT, nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('received_at', INSTANT, nullable=False),
    sa.Column('counted', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_events')),
    sa.UniqueConstraint('namespace', 'source', 'event_id', name=op.f('uq_usage_events_namespace_source_event_id'))
    )
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_usage_events_namespace_event_type_time'), ['namespace', 'event_type', 'time'], unique=False)
        batch_op.create_index(batch_op.f('ix_usage_events_time'), ['time'], unique=False)

    op.create_table('meters',
    sa.Column('id', sa.String(length=26), nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=False),
    sa.Column('slug', sa.String(length=253), nullable=False),
    sa.Column('event_type', sa.String(length=253), nullable=False),
    sa.Column('aggregation', sa.String(length=16), nullable=False),
    sa.Column('value_property', sa.String(length=253), nullable=True),
    sa.Column('created_at', INSTANT, nullable=False),
    sa.CheckConstraint("aggregation IN ('SUM', 'COUNT', 'UNIQUE_COUNT', 'LATEST')", name=op.f('ck_meters_aggregation')),
    sa.ForeignKeyConstraint(['id'], ['resources.id'], name=op.f('fk_meters_id_resources')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_meters')),
    sa.UniqueConstraint('namespace', 'slug', name=op.f('uq_meters_namespace_slug'))
    )
    with op.batch_alter_table('meters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_meters_namespace_event_type'), ['namespace', 'event_type'], unique=False)

    op.create_table('resource_revisions',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('resource_id', sa.String(length=26), nullable=False),
    sa.Column('uid', sa.String(length=64), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('acted_at', INSTANT, nullable=False),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['resource_id'], ['resources.id'], name=op.f('fk_resource_revisions_resource_id_resources')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_resource_revisions')),
    sa.UniqueConstraint('resource_id', 'uid', 'generation', name=op.f('uq_resource_revisions_resource_id_uid_generation'))
    )
    op.create_table('meter_group_by',
    sa.Column('meter_id', sa.String(length=26), nullable=False),
    sa.Column('key', sa.String(length=253), nullable=False),
    sa.Column('json_path', sa.String(length=253), nullable=False),
    sa.Column('added_at', INSTANT, nullable=False),
    sa.ForeignKeyConstraint(['meter_id'], ['meters.id'], name=op.f('fk_meter_group_by_meter_id_meters')),
    sa.PrimaryKeyConstraint('meter_id', 'key', name=op.f('pk_meter_group_by'))
    )
    op.create_table('usage_buckets',
    sa.Column('id', ROW_ID, autoincrement=True, nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=False),
    sa.Column('meter_id', sa.String(length=26), nullable=False),
    sa.Column('subject', sa.String(length=253), nullable=False),
    sa.Column('group_key', sa.Text(), nullable=False),
    sa.Column('minute', INSTANT, nullable=False),
    sa.Column('event_count', sa.BigInteger(), nullable=False),
    sa.Column('value_sum', AMOUNT, nullable=False),
    sa.Column('latest_time', INSTANT, nullable=True),
    sa.Column('latest_value', AMOUNT, nullable=True),
    sa.ForeignKeyConstraint(['meter_id'], ['meters.id'], name=op.f('fk_usage_buckets_meter_id_meters')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_buckets')),
    sa.UniqueConstraint('namespace', 'meter_id', 'subject', 'group_key', 'minute', name=op.f('uq_usage_buckets_namespace_meter_id_subject_group_key_minute'))
    )
    with op.batch_alter_table('usage_buckets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_usage_buckets_meter_id_subject_minute'), ['meter_id', 'subject', 'minute'], unique=False)

    op.create_table('usage_bucket_values',
    sa.Column('bucket_id', ROW_ID, nullable=False),
    sa.Column('value', sa.String(length=253), nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=False),
    sa.ForeignKeyConstraint(['bucket_id'], ['usage_buckets.id'], name=op.f('fk_usage_bucket_values_bucket_id_usage_buckets')),
    sa.PrimaryKeyConstraint('bucket_id', 'value', name=op.f('pk_usage_bucket_values'))
    )


def downgrade() -> None:
    op.drop_table('usage_bucket_values')
    with op.batch_alter_table('usage_buckets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_usage_buckets_meter_id_subject_minute'))

    op.drop_table('usage_buckets')
    op.drop_table('meter_group_by')
    op.drop_table('resource_revisions')
    with op.batch_alter_table('meters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_meters_namespace_event_type'))

    op.drop_table('meters')
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_usage_events_time'))
        batch_op.drop_index(batch_op.f('ix_usage_events_namespace_event_type_time'))

    op.drop_table('usage_events')
    op.drop_table('resources')
    op.drop_table('ledger_state')
    with op.batch_alter_table('feed', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feed_namespace_position'))

    op.drop_table('feed')
