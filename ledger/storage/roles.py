"""Database roles for sidecars: least privilege in the data plane (DESIGN D12), PostgreSQL only.

Role: create (or drop) the login role a namespace's sidecar connects as. It is a member of the
NOLOGIN group ``allotment_sidecar``, which the migrations grant reads of the feed, the catalogue
and the usage tables, inserts of usage, strict-mode leases (insert and update, never delete;
migration 0006), and the feed-position function, nothing else; row-level
security limits every row it sees or writes to the namespace recorded for it in
``sidecar_roles``. The operator (the schema owner) runs these; a sidecar never can.

It must not grant anything beyond membership of the group: privileges live in the migrations.
"""

from __future__ import annotations

import re

from sqlalchemy import Connection, delete, insert

from allotment.ledger.storage.schema import SidecarRoleRow

GROUP_ROLE = "allotment_sidecar"
_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class RolesUnsupportedError(RuntimeError):
    """Sidecar roles need PostgreSQL: SQLite has no roles (it is one node, D14)."""


def _checked(connection: Connection, role_name: str) -> str:
    if connection.dialect.name != "postgresql":
        raise RolesUnsupportedError("sidecar roles need PostgreSQL; SQLite has no roles")
    if not _ROLE_NAME.match(role_name):
        raise ValueError(f"role name {role_name!r} must match {_ROLE_NAME.pattern}")
    return role_name


def create_sidecar_role(
    connection: Connection, namespace: str, role_name: str, *, password: str | None
) -> None:
    """Create ``role_name`` as the sidecar role of ``namespace`` (it may log in with ``password``)."""
    role = _checked(connection, role_name)
    login = "LOGIN"
    if password is not None:
        login += " PASSWORD '" + password.replace("'", "''") + "'"
    connection.exec_driver_sql(f"CREATE ROLE {role} {login} IN ROLE {GROUP_ROLE}")
    connection.execute(insert(SidecarRoleRow).values(role_name=role, namespace=namespace))


def drop_sidecar_role(connection: Connection, role_name: str) -> None:
    """Remove ``role_name``'s namespace mapping and drop the role."""
    role = _checked(connection, role_name)
    connection.execute(delete(SidecarRoleRow).where(SidecarRoleRow.role_name == role))
    connection.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
