"""The attempt life cycle's statements, run on one DB-API connection per ledger.

A claim+done cycle is a handful of short statements; through SQLAlchemy's
execution layer each one cost more Python than the database took to run it
(benchmarks/ledger.py: 0.3x the speed of the same SQL in plain sqlite3). So the
hot path compiles its SQLAlchemy Core statements once per dialect into SQL text
and runs them on the driver's connection, which keeps it open: sqlite3 caches
the prepared statements per connection and psycopg prepares a statement once it
has run a few times. No pre-ping either: a broken connection fails its
statement, is thrown away, and the caller's retry gets a new one.

Errors come out as SQLAlchemy's exception classes (OperationalError,
IntegrityError, ...), exactly as from the cold paths, so a worker's retry of a
locked or restarted database treats both alike.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.sql import ClauseElement

from .ledger_sql import Prepared


class HotConnection:
    """A DB-API connection checked out of the engine's pool and kept, with the statements prepared for it.

    One lock serialises its use (the worker's heartbeat thread shares it with the main thread); a child
    process after fork() opens its own instead of using the parent's.
    """

    def __init__(self, engine: Engine, begin: str | None) -> None:
        self.engine = engine
        self.begin = begin                     # SQLite: "BEGIN IMMEDIATE"; PostgreSQL begins by itself
        self.lock = threading.RLock()
        self._prepared: dict[int, tuple[ClauseElement, Prepared]] = {}
        self._fairy: Any = None
        self._pid = 0

    def prepared(self, statement: ClauseElement) -> Prepared:
        found = self._prepared.get(id(statement))
        if found is None or found[0] is not statement:
            found = (statement, Prepared.compile(statement, self.engine.dialect))
            self._prepared[id(statement)] = found
        return found[1]

    def _connection(self) -> Any:
        if self._fairy is None or self._pid != os.getpid():
            # After fork() the parent's connection belongs to the parent: never touch, close or reuse it.
            self._fairy = None
            try:
                self._fairy = self.engine.raw_connection()
            except self._dbapi_error() as error:
                # The pool hands out the driver's own exception: a server that is away must read as
                # SQLAlchemy's OperationalError here too, for the worker's retry to wait it out.
                raise sa_exc.DBAPIError.instance("connect", (), error, self._dbapi_error(),
                                                 connection_invalidated=True) from error
            self._pid = os.getpid()
        return self._fairy

    def close(self) -> None:
        with self.lock:
            if self._fairy is not None and self._pid == os.getpid():
                self._fairy.close()   # back to the pool, which the engine's dispose() then closes
            self._fairy = None

    @contextmanager
    def transaction(self) -> Iterator["Transaction"]:
        """A write transaction: committed when the block ends, rolled back when it raises."""
        with self.lock:
            connection = self._connection()
            tx = Transaction(self, connection.cursor())
            try:
                if self.begin:
                    tx.cursor.execute(self.begin)
                yield tx
                connection.commit()
            except BaseException as error:
                self._abort(connection, tx, error)
                if isinstance(error, self._dbapi_error()):
                    raise self._wrapped(error, tx) from error
                raise
            finally:
                try:
                    tx.cursor.close()
                except Exception:  # noqa: BLE001 - a dead connection's cursor; the error that matters is raised
                    pass

    def _dbapi_error(self) -> type[BaseException]:
        return self.engine.dialect.loaded_dbapi.Error

    def _abort(self, connection: Any, tx: "Transaction", error: BaseException) -> None:
        disconnected = isinstance(error, self._dbapi_error()) and self.engine.dialect.is_disconnect(
            error, connection, tx.cursor)
        if not disconnected:
            try:
                connection.rollback()
                return
            except Exception:  # noqa: BLE001 - cannot even roll back: the connection is unusable
                pass
        try:
            connection.invalidate()
        except Exception:  # noqa: BLE001
            pass
        self._fairy = None

    def _wrapped(self, error: BaseException, tx: "Transaction") -> BaseException:
        return sa_exc.DBAPIError.instance(tx.last_sql, tx.last_args, error, self._dbapi_error(),
                                          connection_invalidated=self._fairy is None)


class Transaction:
    __slots__ = ("hot", "cursor", "last_sql", "last_args")

    def __init__(self, hot: HotConnection, cursor: Any) -> None:
        self.hot, self.cursor = hot, cursor
        self.last_sql: str = hot.begin or ""
        self.last_args: Any = ()

    def execute(self, statement: ClauseElement, params: dict[str, Any]) -> Any:
        prepared = self.hot.prepared(statement)
        self.last_sql, self.last_args = prepared.sql, prepared.args(params)
        self.cursor.execute(self.last_sql, self.last_args)
        return self.cursor

    def execute_text(self, sql: str) -> Any:
        self.last_sql, self.last_args = sql, ()
        self.cursor.execute(sql)
        return self.cursor
