"""New studies into a SQLite ledger in bulk: many rows by few statements, and a new ledger's rows written by a
second process while this one makes them.

Ledger.add_studies uses it. Into an existing ledger, more than one chunk of rows goes in through SqliteBulk inside
the caller's transaction. A new ledger being filled under its temporary name (Ledger's stage_new: nobody else
sees it) gets its rows from StagedWriter: this process makes the rows (reading the dataset, choosing each study's
series) while a forked writer process inserts them, each on a CPU of its own (a million studies: the rows made
in 9 s, the writer's 7.6 s of inserts beside them; 14 s one after the other).
"""
from __future__ import annotations

import marshal
import multiprocessing
import operator
import pickle
import sqlite3
from functools import lru_cache
from typing import Any

from . import ledger_counts, ledger_sqlite
from .forked import Forked
from .ledger_summary import STATES

# A new study's row, as add_studies makes it: attempts 0 and updated_at = added_at.
ADDED_STUDY = ("study_id", "seq", "series_id", "series_description", "selection_reason", "input_path", "state",
               "attempts", "error_class", "error_message", "added_at", "updated_at")


class SqliteBulk:
    """A bulk insert into a SQLite ledger, inside the caller's write transaction (BEGIN IMMEDIATE).

    Per row, SQLite runs the counters' insert triggers and updates every index of both tables: a million
    studies and their history rows took 62 s in raw sqlite3 that way, 18 s without (a loaded 2-core machine).
    So, until finish(): the insert triggers are dropped (finish adds the
    counters from the inserted rows and makes the triggers again, ledger_counts.SQLITE_INSERT_TRIGGERS);
    into an empty ledger the secondary indexes are dropped too, and made again from the full tables (one sort
    each, not a million random insertions); and the page cache is larger. Every statement is in the one
    transaction: other connections see the ledger as it was, or all of it; a crash leaves it as it was.
    """

    CACHE_KIB = 64 * 1024

    def __init__(self, cursor: Any, *, empty: bool) -> None:
        self.cursor = cursor
        cursor.execute("PRAGMA cache_size")
        self.cache_size = cursor.fetchone()[0]
        cursor.execute(f"PRAGMA cache_size = -{self.CACHE_KIB}")
        names = ledger_counts.SQLITE_INSERT_TRIGGERS
        cursor.execute(f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN "
                       f"({', '.join('?' * len(names))})", names)
        self.triggers = cursor.fetchall()
        # The ledger's own indexes (an index SQLite makes for a key has no sql: it stays).
        self.indexes: list[tuple[str, str]] = []
        if empty:
            cursor.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                           "AND tbl_name IN ('studies', 'history')")
            self.indexes = cursor.fetchall()
        for kind, made in (("TRIGGER", self.triggers), ("INDEX", self.indexes)):
            for name, _ in made:
                cursor.execute(f'DROP {kind} "{name}"')

    def finish(self, counted: dict[str, int]) -> None:
        for _, sql in (*self.indexes, *self.triggers):
            self.cursor.execute(sql)
        self.cursor.executemany(ledger_counts.ADD, sorted(counted.items()))

    def close(self) -> None:
        # The connection goes back to the pool: its later transactions get the ordinary cache.
        self.cursor.execute(f"PRAGMA cache_size = {self.cache_size}")


# The columns of ADDED_STUDY a new study's row may leave empty.
_NULLABLE_ADDED = (2, 3, 4, 5, 8, 9)   # series_id, series_description, selection_reason, input_path, error_*
_ADDED_HISTORY_SQL = ("INSERT INTO history (study_id, event, to_state, at, error_class, message) "
                      "SELECT study_id, 'added', state, added_at, error_class, error_message FROM studies "
                      "WHERE rowid > ? ORDER BY rowid")


@lru_cache(maxsize=64)
def _added_study_sql(state: str, empty: tuple[bool, ...]) -> tuple[str, tuple[int, ...]]:
    """(INSERT of a new study in `state` whose _NULLABLE_ADDED columns are `empty` or not, the places in its row
    (ADDED_STUDY) of the values it binds). What every such row has is in the SQL, not bound per row: an
    empty column is a NULL (Python's sqlite3 looks up an adapter for every None it binds, ~1 us each: four per
    study and its history row were a sixth of a million studies' init), the state, attempts 0, and updated_at the
    same parameter as added_at."""
    columns = ADDED_STUDY
    null = {i for i, e in zip(_NULLABLE_ADDED, empty) if e}
    bound = tuple(i for i in range(len(columns)) if i not in null and columns[i] not in ("state", "attempts",
                                                                                       "updated_at"))
    values = []
    for i, name in enumerate(columns):
        if i in null:
            values.append("NULL")
        elif name == "state":
            values.append(f"'{state}'")   # one of STATES (add_studies'), never text from the dataset
        elif name == "attempts":
            values.append("0")
        else:
            values.append(f"?{bound.index(columns.index('added_at' if name == 'updated_at' else name)) + 1}")
    return f"INSERT INTO studies ({', '.join(columns)}) VALUES ({', '.join(values)})", bound


def insert_rows(cursor: Any, new_rows: list[tuple[Any, ...]]) -> None:
    """New study rows (ADDED_STUDY's columns, in order; attempts 0, updated_at = added_at) and their
    `added` history rows into SQLite.

    Rows go in in their order, each run of rows of one state and the same empty columns by one executemany. The
    history rows are copied from the study rows just inserted, in their order, by one INSERT ... SELECT
    (to_state = state, at = added_at, error_class and message as the study's): the rows an executemany of each
    one's values gave, without binding a million rows' values a second time.
    """
    cursor.execute("SELECT max(rowid) FROM studies")
    last = cursor.fetchone()[0] or 0
    a, b, c, d, e, f = _NULLABLE_ADDED
    run: list[tuple[Any, ...]] = []
    shape: tuple[Any, ...] = ()
    for row in new_rows:
        kind = (row[6], row[a] is None, row[b] is None, row[c] is None, row[d] is None, row[e] is None,
                row[f] is None)
        if kind != shape:
            if run:
                _sqlite_run(cursor, shape, run)
            run, shape = [], kind
        run.append(row)
    if run:
        _sqlite_run(cursor, shape, run)
    cursor.execute(_ADDED_HISTORY_SQL, (last,))


def _sqlite_run(cursor: Any, shape: tuple[Any, ...], rows: list[tuple[Any, ...]]) -> None:
    if shape[0] not in STATES:
        raise ValueError(f"not a study state: {shape[0]!r}")
    sql, bound = _added_study_sql(shape[0], shape[1:])
    cursor.executemany(sql, map(operator.itemgetter(*bound), rows))


class StagedWriter:
    """A forked process (Forked) that writes chunks of new rows (insert_rows) into the staged SQLite ledger at
    `path`, in one transaction with SqliteBulk, while this process makes the next ones.

    send() each chunk, then finish() with the counters of all the rows: it returns once they are committed, or
    raises what the writer raised (the ledger file is then the caller's to discard: filling() does). abort() when
    this process fails midway: the writer is stopped uncommitted. When this process dies, the writer's input ends
    and it stops too. The file is the staged ledger's, which no other process opens.
    """

    def __init__(self, path: str, on_network: bool) -> None:
        rows_in, self._rows_out = multiprocessing.get_context("fork").Pipe(duplex=False)
        self.process = Forked(_write, path, on_network, rows_in, close_in_child=(self._rows_out,))
        rows_in.close()

    def send(self, rows: list[tuple[Any, ...]]) -> None:
        self._put(rows, None)

    def finish(self, counted: dict[str, int]) -> None:
        self._put([], counted)
        self._rows_out.close()
        self.process.result()

    def abort(self) -> None:
        self._rows_out.close()
        self.process.stop()

    def _put(self, rows: list[tuple[Any, ...]], counted: dict[str, int] | None) -> None:
        try:
            self._rows_out.send_bytes(_packed((rows, counted)))
        except OSError:   # the writer is gone: what it raised
            self._rows_out.close()
            self.process.result()
            raise


def _write(path: str, on_network: bool, rows_in: Any) -> None:
    """StagedWriter's process: every chunk it is sent into the ledger at `path`, committed at the finish (the
    chunk that comes with the counters). EOFError when its input ends before that: uncommitted, rolled back."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        ledger_sqlite.configure(connection, on_network, staged=True)
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        bulk = SqliteBulk(cursor, empty=True)
        while True:
            rows, counted = _unpacked(rows_in.recv_bytes())
            if rows:
                insert_rows(cursor, rows)
            if counted is not None:
                break
        bulk.finish(counted)
        bulk.close()
        cursor.execute("COMMIT")
    finally:
        connection.close()


def _packed(value: Any) -> bytes:
    """`value` as bytes for the writer: marshal, three times faster than pickle for tuples of text and numbers (a
    million rows: ~1 s of init's process) and read by the same interpreter (a fork); pickle for what marshal does
    not take (a subclass of str, say, from a dataset's own reader)."""
    try:
        return b"m" + marshal.dumps(value)
    except ValueError:
        return b"p" + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def _unpacked(data: bytes) -> Any:
    return marshal.loads(data[1:]) if data[:1] == b"m" else pickle.loads(data[1:])
