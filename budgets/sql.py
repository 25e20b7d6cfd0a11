"""Small helpers for the few hot-path statements written as SQL (the ledger and the usage
record insert): one statement each, exact decimals on SQLite and PostgreSQL alike."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import connection, models


def dec(value: object) -> Decimal:
    """A database number as an exact Decimal (SQLite hands back int, float or str)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))  # the shortest repr is the decimal text SQLite was given
    return Decimal(value)


def db_text(value: Decimal) -> str:
    """Decimals travel as text, so no driver turns them into binary floats on the way."""
    return format(value, "f")


def locked_row(cursor: Any, query: str, params: list) -> tuple | None:
    """Fetch one row, locked for the rest of the transaction (SQLite: the IMMEDIATE transaction
    already holds the database's write lock)."""
    if connection.features.has_select_for_update:
        query += " FOR UPDATE"
    cursor.execute(query, params)
    return cursor.fetchone()


def insert_one(cursor: Any, obj: models.Model, *, conflict: tuple[str, ...] = ()) -> int:
    """INSERT one model instance with one statement (ON CONFLICT DO NOTHING on the `conflict`
    columns). Returns the number of rows written (0 when the row already existed)."""
    fields = [
        f
        for f in obj._meta.concrete_fields
        if not (f.primary_key and getattr(obj, f.attname) is None)
    ]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    values = [f.get_db_prep_save(getattr(obj, f.attname), connection) for f in fields]
    marks = ", ".join(["%s"] * len(fields))
    query = f"INSERT INTO {obj._meta.db_table} ({columns}) VALUES ({marks})"
    if conflict:
        target = ", ".join(connection.ops.quote_name(column) for column in conflict)
        query += f" ON CONFLICT ({target}) DO NOTHING"
    cursor.execute(query, values)
    return cursor.rowcount
