"""The migrations build exactly the schema the models describe, on both backends.

A model changed without a migration (a column, an index, a type) would pass
every test that creates its database through the migrations and still break
an installation upgraded from an older release; alembic's autogenerate
comparison finds it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import mailcase.models  # noqa: F401  (registers the tables in SQLModel.metadata)
from mailcase.store import Store


def test_the_migrations_build_the_models_schema(db_url: str) -> None:
    Store.open(db_url, auto_upgrade=True).dispose()
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()
    assert diff == []
