"""Hot-path statements: compiled once per dialect, run on the driver's own cursor.

Ingest runs about twenty small statements per message. Through SQLAlchemy's
``Connection.execute`` each one cost more than the database's own work
(py-spy, bench/ingest.py: a notice row 125 µs against 60 µs on the cursor):
the compiled-cache lookup, an execution context, parameter processing and
the result wrapper. :class:`Prepared` keeps what matters from SQLAlchemy, its
SQL for the dialect (compiled exactly as ``execute`` compiles it, with the
parameter names as column keys) and its type processing of every bound
value, so a row is stored exactly as a plain ``execute`` would store it, and
skips the rest.

Its limits are checked when a statement is first compiled, so a misuse fails
in the first test that runs it: no expanding (``IN``) parameters, no
Python-side column defaults (an INSERT must name every column but its key),
and results of plain values only (ints, strings: no type needs converting).
Driver errors come back as SQLAlchemy's exceptions (``IntegrityError`` …),
and a lost connection is invalidated as SQLAlchemy would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    positional: bool
    # Driver order for a positional paramstyle (a name may repeat); each name once otherwise.
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    fixed: Mapping[str, Any]  # values written in the statement itself (literals)


class DriverResult:
    """The rows (fetched at once, so the cursor is done) and the row count of one statement."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def all(self) -> list[Any]:
        return self.rows

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalar_one(self) -> Any:
        if len(self.rows) != 1:
            raise (
                sa.exc.NoResultFound("no row")
                if not self.rows
                else sa.exc.MultipleResultsFound("more than one row")
            )
        return self.rows[0][0]

    def scalar_one_or_none(self) -> Any:
        if len(self.rows) > 1:
            raise sa.exc.MultipleResultsFound("more than one row")
        return self.scalar()

    def scalars(self) -> _Scalars:
        return _Scalars([row[0] for row in self.rows])


class _Scalars(list[Any]):
    def all(self) -> list[Any]:
        return list(self)

    def first(self) -> Any:
        return self[0] if self else None


class Prepared:
    """A Core ``statement`` run on the driver's cursor; see the module's docstring."""

    def __init__(self, statement: sa.ClauseElement) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, frozenset[str]], _Plan] = {}

    def execute(self, conn: sa.Connection, params: Mapping[str, Any]) -> DriverResult:
        """Run the statement with ``params`` in ``conn``'s transaction."""
        dialect = conn.dialect
        key = (dialect.name, frozenset(params))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan(dialect, params)
        values = {**plan.fixed, **params} if plan.fixed else params
        args: Sequence[Any] | dict[str, Any]
        if plan.positional:
            args = [
                values[n] if p is None else p(values[n])
                for n, p in zip(plan.names, plan.processors, strict=True)
            ]
        else:
            args = {
                n: values[n] if p is None else p(values[n])
                for n, p in zip(plan.names, plan.processors, strict=True)
            }
        dbapi_connection = conn.connection.driver_connection
        assert dbapi_connection is not None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(plan.sql, args)
            rows = cursor.fetchall() if cursor.description is not None else []
            return DriverResult(rows, cursor.rowcount)
        except dialect.loaded_dbapi.Error as exc:
            invalidated = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if invalidated:
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                plan.sql,
                args,
                exc,
                dialect.loaded_dbapi.Error,
                hide_parameters=conn.engine.hide_parameters,  # as execute() would
                connection_invalidated=invalidated,
                dialect=dialect,
            ) from exc
        finally:
            cursor.close()

    def _plan(self, dialect: Dialect, params: Mapping[str, Any]) -> _Plan:
        # The same compilation Connection.execute does (sorted keys as column keys).
        compiled = self.statement.compile(dialect=dialect, column_keys=sorted(params))
        assert isinstance(compiled, sa.sql.compiler.SQLCompiler)
        problem = ""
        if compiled.insert_prefetch or compiled.update_prefetch:
            problem = "it leaves columns to Python-side defaults"
        elif compiled.escaped_bind_names:
            problem = "a parameter name needs escaping"
        elif any(b.expanding for b in compiled.binds.values()):
            problem = "it has an expanding parameter"
        elif any(
            c.type.dialect_impl(dialect).result_processor(dialect, None) is not None
            for c in getattr(self.statement, "exported_columns", ())
        ):
            problem = "a result column needs converting"
        if problem:
            raise TypeError(f"cannot prepare {self.statement}: {problem}")
        if compiled.positional:
            assert compiled.positiontup is not None
            names = tuple(compiled.positiontup)
        else:
            names = tuple(compiled.binds)
        fixed = {}
        for name in names:
            if name not in params:
                bind = compiled.binds[name]
                if bind.callable is None and bind.value is None and bind.required:
                    raise TypeError(f"cannot prepare {self.statement}: no value for {name}")
                fixed[name] = bind.effective_value
        processors = tuple(
            compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names
        )
        return _Plan(compiled.string, compiled.positional, names, processors, fixed)
