"""PostgreSQL helpers shared by tests (importable: tests/ is on sys.path)."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from triggerd.store.tables import metadata


def truncate(url: str) -> None:
    """Empty every triggerd table (fast, and keeps the migrated schema)."""
    engine = create_engine(url)
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    engine.dispose()
