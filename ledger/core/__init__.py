"""The pure ledger core: every number of allotment is decided here, once.

Modules: ``model`` (domain types), ``timeutil`` (minute resolution, RFC 3339, calendar
arithmetic), ``ulid``, ``periods`` (usage periods, resets and edits), ``grants`` (expiration,
activity, burn order, default grants), ``usage`` (per-minute usage series), ``engine`` (the
burn-down), ``values`` (entitlement values with ``valid_until``), ``history`` (windowed and
burn-down history); ``resources``, ``validation`` and ``reconcile`` build on them.

Must not: do I/O, log, use asyncio or SQLAlchemy, or read the clock (``now`` is a parameter).
"""
