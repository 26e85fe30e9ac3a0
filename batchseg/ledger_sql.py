"""A SQLAlchemy Core statement as its driver's SQL text, with its parameters laid out the way the driver wants.

The hot path (ledger_hot.py) compiles its statements once per dialect at run time; the summary's reads are
compiled ahead of time into ledger_reads.py, so that `status` runs them on a plain driver connection without
importing SQLAlchemy at all. Both hold them as a `Prepared`.
"""
from __future__ import annotations

from typing import Any


class Prepared:
    """SQL text, the parameter names in the order of its placeholders (None: the driver takes them by name),
    and the values of the literals the statement holds (state = 'running' becomes a parameter too)."""

    __slots__ = ("sql", "names", "defaults")

    def __init__(self, sql: str, names: tuple[str, ...] | None, defaults: dict[str, Any]) -> None:
        self.sql, self.names, self.defaults = sql, names, defaults

    @classmethod
    def compile(cls, statement: Any, dialect: Any, *, literal: bool = False) -> "Prepared":
        """`statement` (a Core ClauseElement) compiled for `dialect` (a SQLAlchemy Dialect); `literal`: every
        value written into the text (a statement of constants only, such as an IN list), no parameters."""
        compiled = statement.compile(dialect=dialect, compile_kwargs={"literal_binds": literal})
        return cls(str(compiled), tuple(compiled.positiontup or ()) if compiled.positional else None,
                   dict(compiled.construct_params(_check=False)))

    def args(self, params: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values = {**self.defaults, **params}
        if self.names is None:
            return values
        return tuple(values[name] for name in self.names)

    def run(self, cursor: Any, params: dict[str, Any] | None = None) -> Any:
        """The statement executed on a DB-API `cursor` with `params` (over the defaults); the cursor."""
        cursor.execute(self.sql, self.args(params or {}))
        return cursor

    def __repr__(self) -> str:
        return f"Prepared({self.sql!r}, {self.names!r}, {self.defaults!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prepared) and (self.sql, self.names, self.defaults) == (
            other.sql, other.names, other.defaults)
