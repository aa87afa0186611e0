"""Least privilege for sidecars (D12) and commit-ordered feed positions on PostgreSQL (D10).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Expand only. On every database: the ``sidecar_roles`` table mapping a sidecar's database role
to its namespace. On PostgreSQL also: ``allotment_allocate_feed_positions(n)``, which takes a
transaction-level advisory lock before advancing the feed counter, so positions follow commit
order; the NOLOGIN group role ``allotment_sidecar``, granted reads of the feed and the catalogue
and writes of usage only; and row-level security limiting that role to its namespace.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FEED_LOCK_KEY = 0x616C666565  # "alfee"
GROUP = "allotment_sidecar"
# Tables carrying a namespace column: a sidecar sees only its namespace's rows.
NAMESPACED = ("resources", "meters", "usage_events", "usage_buckets", "usage_bucket_values", "feed")
READ = ("alembic_version", "ledger_state", "resources", "meters", "meter_group_by", "usage_buckets",
        "usage_bucket_values", "usage_events", "feed")
INSERT = ("usage_events", "usage_buckets", "usage_bucket_values", "feed")


def upgrade() -> None:
    op.create_table(
        "sidecar_roles",
        sa.Column("role_name", sa.String(length=63), nullable=False),
        sa.Column("namespace", sa.String(length=63), nullable=False),
        sa.PrimaryKeyConstraint("role_name", name=op.f("pk_sidecar_roles")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION allotment_allocate_feed_positions(count integer) RETURNS bigint
        LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
        DECLARE last bigint;
        BEGIN
            IF count < 1 THEN
                RAISE EXCEPTION 'feed positions are allocated in positive counts, got %', count;
            END IF;
            PERFORM pg_advisory_xact_lock({FEED_LOCK_KEY});
            UPDATE ledger_state SET feed_position = feed_position + count WHERE id = 1
                RETURNING feed_position INTO last;
            RETURN last;
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION allotment_sidecar_namespace() RETURNS text
        LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
            SELECT namespace FROM sidecar_roles WHERE role_name = current_user
        $$
        """
    )
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{GROUP}') THEN
                CREATE ROLE {GROUP} NOLOGIN;
            END IF;
        END $$
        """
    )
    # The calling role reads its own mapping row, and only that one.
    op.execute(f"GRANT SELECT ON sidecar_roles TO {GROUP}")
    op.execute("ALTER TABLE sidecar_roles ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY own_role ON sidecar_roles TO {GROUP} USING (role_name = current_user)"
    )
    op.execute("REVOKE ALL ON FUNCTION allotment_allocate_feed_positions(integer) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION allotment_allocate_feed_positions(integer) TO {GROUP}")
    op.execute(f"GRANT SELECT ON {', '.join(READ)} TO {GROUP}")
    op.execute(f"GRANT INSERT ON {', '.join(INSERT)} TO {GROUP}")
    op.execute(
        f"GRANT UPDATE (event_count, value_sum, latest_time, latest_value) ON usage_buckets "
        f"TO {GROUP}"
    )
    op.execute(f"GRANT UPDATE (counted) ON usage_events TO {GROUP}")
    op.execute(f"GRANT USAGE ON SEQUENCE usage_events_id_seq, usage_buckets_id_seq TO {GROUP}")
    for table in NAMESPACED:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY sidecar_namespace ON {table} TO {GROUP} "
            "USING (namespace = allotment_sidecar_namespace()) "
            "WITH CHECK (namespace = allotment_sidecar_namespace())"
        )
    op.execute("ALTER TABLE meter_group_by ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY sidecar_namespace ON meter_group_by TO {GROUP} "
        "USING (EXISTS (SELECT 1 FROM meters WHERE meters.id = meter_group_by.meter_id))"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in (*NAMESPACED, "meter_group_by"):
            op.execute(f"DROP POLICY sidecar_namespace ON {table}")
            op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        op.execute(f"REVOKE ALL ON {', '.join(READ)} FROM {GROUP}")
        op.execute(f"REVOKE ALL ON SEQUENCE usage_events_id_seq, usage_buckets_id_seq FROM {GROUP}")
        op.execute("DROP POLICY own_role ON sidecar_roles")
        op.execute(f"REVOKE ALL ON sidecar_roles FROM {GROUP}")
        op.execute("DROP FUNCTION allotment_sidecar_namespace()")
        op.execute("DROP FUNCTION allotment_allocate_feed_positions(integer)")
    op.drop_table("sidecar_roles")
