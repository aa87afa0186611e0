"""Strict-mode leases: slices of a hard-limit balance reserved by sidecars (D12, README "Usage").

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24

Expand only: the ``leases`` table. On PostgreSQL the sidecar group may read, insert and update
(``reserved``, ``spent``, ``expires_at`` only) the leases of its own namespace, as one of
ingestion's writes (D12); it may not delete them (expired rows count for nothing and the
ledger's owner prunes them). A lease never changes a balance.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INSTANT = sa.DateTime(timezone=True).with_variant(sa.String(27), "sqlite")
AMOUNT = sa.Numeric().with_variant(sa.String(80), "sqlite")
GROUP = "allotment_sidecar"


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("entitlement_id", sa.String(length=26), nullable=False),
        sa.Column("period_start", INSTANT, nullable=False),
        sa.Column("holder", sa.String(length=253), nullable=False),
        sa.Column("reserved", AMOUNT, nullable=False),
        sa.Column("spent", AMOUNT, nullable=False),
        sa.Column("expires_at", INSTANT, nullable=False),
        sa.PrimaryKeyConstraint(
            "namespace", "entitlement_id", "period_start", "holder", name=op.f("pk_leases")
        ),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"GRANT SELECT, INSERT ON leases TO {GROUP}")
    op.execute(f"GRANT UPDATE (reserved, spent, expires_at) ON leases TO {GROUP}")
    op.execute("ALTER TABLE leases ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY sidecar_namespace ON leases TO {GROUP} "
        "USING (namespace = allotment_sidecar_namespace()) "
        "WITH CHECK (namespace = allotment_sidecar_namespace())"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP POLICY sidecar_namespace ON leases")
        op.execute(f"REVOKE ALL ON leases FROM {GROUP}")
    op.drop_table("leases")
