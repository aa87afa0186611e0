"""A sidecar's ledger connection under its namespace's PostgreSQL role (D12), for role tests."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy.engine import make_url

from allotment.ledger.storage import roles
from allotment.ledger.storage.engine import Ledger, open_ledger

PASSWORD = "sidecar-secret"


@contextlib.contextmanager
def sidecar_role_ledger(owner: Ledger, url: str, namespace: str, prefix: str) -> Iterator[Ledger]:
    """Create a sidecar role for ``namespace``, yield a ledger logged in as it, then drop it."""
    role = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with owner.write() as conn:
        roles.create_sidecar_role(conn, namespace, role, password=PASSWORD)
    sidecar = open_ledger(
        make_url(url).set(username=role, password=PASSWORD).render_as_string(hide_password=False)
    )
    try:
        yield sidecar
    finally:
        sidecar.dispose()
        with owner.write() as conn:
            roles.drop_sidecar_role(conn, role)
