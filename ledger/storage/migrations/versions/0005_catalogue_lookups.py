"""Catalogue lookups that do not scan a namespace: keys by record, entitlements by pair.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

Expand only: an index on ``catalogue_keys.resource_id`` and the ``entitlement_pairs`` table,
which indexes entitlements by (namespace, customer key, feature key) for equality lookups.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("catalogue_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_catalogue_keys_resource_id"), ["resource_id"], unique=False
        )
    op.create_table(
        "entitlement_pairs",
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.Column("customer_key", sa.String(length=253), nullable=False),
        sa.Column("feature_key", sa.String(length=253), nullable=False),
        sa.Column("entitlement_id", sa.String(length=26), nullable=False),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["resources.id"],
            name=op.f("fk_entitlement_pairs_entitlement_id_resources"),
        ),
        sa.PrimaryKeyConstraint(
            "namespace",
            "customer_key",
            "feature_key",
            "entitlement_id",
            name=op.f("pk_entitlement_pairs"),
        ),
    )


def downgrade() -> None:
    op.drop_table("entitlement_pairs")
    with op.batch_alter_table("catalogue_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalogue_keys_resource_id"))
