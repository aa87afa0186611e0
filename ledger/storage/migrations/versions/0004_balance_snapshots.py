"""Balance snapshots: the engine's cached states, invalidated by late usage (spec §8.6, D9).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

Expand only. On PostgreSQL the sidecar group may read its namespace's snapshots and delete
them (snapshot invalidation is one of ingestion's writes, D12), and save new ones.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INSTANT = sa.DateTime(timezone=True).with_variant(sa.String(27), "sqlite")
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
GROUP = "allotment_sidecar"


def upgrade() -> None:
    op.create_table(
        "balance_snapshots",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("entitlement_id", sa.String(length=26), nullable=False),
        sa.Column("meter_id", sa.String(length=26), nullable=False),
        sa.Column("at", INSTANT, nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("recorded_at", INSTANT, nullable=False),
        sa.ForeignKeyConstraint(
            ["meter_id"], ["meters.id"], name=op.f("fk_balance_snapshots_meter_id_meters")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balance_snapshots")),
        sa.UniqueConstraint(
            "entitlement_id", "at", name=op.f("uq_balance_snapshots_entitlement_id_at")
        ),
    )
    with op.batch_alter_table("balance_snapshots", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_balance_snapshots_meter_id_at"), ["meter_id", "at"], unique=False
        )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"GRANT SELECT, INSERT, DELETE ON balance_snapshots TO {GROUP}")
    op.execute(f"GRANT USAGE ON SEQUENCE balance_snapshots_id_seq TO {GROUP}")
    op.execute("ALTER TABLE balance_snapshots ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY sidecar_namespace ON balance_snapshots TO {GROUP} "
        "USING (namespace = allotment_sidecar_namespace()) "
        "WITH CHECK (namespace = allotment_sidecar_namespace())"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP POLICY sidecar_namespace ON balance_snapshots")
        op.execute(f"REVOKE ALL ON balance_snapshots FROM {GROUP}")
    with op.batch_alter_table("balance_snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_balance_snapshots_meter_id_at"))
    op.drop_table("balance_snapshots")
