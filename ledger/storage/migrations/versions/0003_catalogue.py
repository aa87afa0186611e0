"""The catalogue: append-only record versions and per-namespace keys (D1, D4, D5).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

Expand only. ``catalogue_versions`` holds every version of every record's read-contract
document; ``catalogue_keys`` makes keys unique per namespace. On PostgreSQL the sidecar group
role may read its namespace's versions, and nothing of the keys.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

INSTANT = sa.DateTime(timezone=True).with_variant(sa.String(27), "sqlite")
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
    op.drop_table("catalogue_keys")
    with op.batch_alter_table("catalogue_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalogue_versions_namespace_kind"))
    op.drop_table("catalogue_versions")
