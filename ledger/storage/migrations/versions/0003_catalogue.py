"""The catalogue: record versions, per-namespace keys, the reconciliation log (D1-D5).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

Expand only. ``catalogue_versions`` holds every version of every record's read-contract
document; ``catalogue_keys`` makes keys unique per namespace; ``reconcile_log`` keeps what
the reconciliation applied, first saw and orphaned, per record. On PostgreSQL the sidecar group
role may read its namespace's versions, and nothing of the keys.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

INSTANT = sa.DateTime(timezone=True).with_variant(sa.String(27), "sqlite")
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
GROUP = "allotment_sidecar"

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "catalogue_versions",
        sa.Column("resource_id", sa.String(length=26), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("recorded_at", INSTANT, nullable=False),
        sa.ForeignKeyConstraint(
            ["resource_id"],
            ["resources.id"],
            name=op.f("fk_catalogue_versions_resource_id_resources"),
        ),
        sa.PrimaryKeyConstraint("resource_id", "version", name=op.f("pk_catalogue_versions")),
    )
    with op.batch_alter_table("catalogue_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_catalogue_versions_namespace_kind"), ["namespace", "kind"], unique=False
        )
    op.create_table(
        "catalogue_keys",
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("space", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=506), nullable=False),
        sa.Column("resource_id", sa.String(length=26), nullable=False),
        sa.ForeignKeyConstraint(
            ["resource_id"], ["resources.id"], name=op.f("fk_catalogue_keys_resource_id_resources")
        ),
        sa.PrimaryKeyConstraint("namespace", "space", "key", name=op.f("pk_catalogue_keys")),
    )
    op.create_table(
        "reconcile_log",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("resource_id", sa.String(length=26), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("uid", sa.String(length=64), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("at", INSTANT, nullable=False),
        sa.Column("spec", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["resource_id"], ["resources.id"], name=op.f("fk_reconcile_log_resource_id_resources")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_log")),
    )
    with op.batch_alter_table("reconcile_log", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reconcile_log_resource_id_id"), ["resource_id", "id"], unique=False
        )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"GRANT SELECT ON catalogue_versions TO {GROUP}")
    op.execute("ALTER TABLE catalogue_versions ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY sidecar_namespace ON catalogue_versions TO {GROUP} "
        "USING (namespace = allotment_sidecar_namespace())"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP POLICY sidecar_namespace ON catalogue_versions")
        op.execute(f"REVOKE ALL ON catalogue_versions FROM {GROUP}")
    with op.batch_alter_table("reconcile_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reconcile_log_resource_id_id"))
    op.drop_table("reconcile_log")
    op.drop_table("catalogue_keys")
    with op.batch_alter_table("catalogue_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalogue_versions_namespace_kind"))
    op.drop_table("catalogue_versions")
