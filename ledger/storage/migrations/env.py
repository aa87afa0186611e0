"""Alembic environment: migrate the ledger on the connection ``allotment migrate`` hands in.

Role: run migrations against ``config.attributes["connection"]`` (or ``sqlalchemy.url``), with
the ledger's metadata as the target so ``alembic check`` compares models and migrations. It must
not read the environment: the URL comes from the command line through the config.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from allotment.ledger.storage.schema import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the given connection or URL."""
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


run_migrations_online()
