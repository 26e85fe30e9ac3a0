"""The ledger's summary (`status`, `status --json`, `run`'s progress line), read on a plain driver connection.

One code path and one set of SQL for every caller: `Ledger.summary` runs it on a connection of its engine
(SQLite or PostgreSQL), and `batchseg status` on a sqlite3 connection of its own (`PlainReader`), so that
status never imports SQLAlchemy: at a million studies the import was half of status's time, and the reads
themselves take milliseconds (counters kept by triggers, failure groups from a partial index). The SQL is
ledger.py's Core statements compiled ahead of time (ledger_reads.py, kept current by a test). `batchseg report`
reads a SQLite ledger through the same plain reader (its reads: ledger_report.py).

The plain reader only reads a ledger that needs nothing done to it first: a SQLite file that exists, on a
local filesystem, with the current schema, counters and columns, and no Slurm submission to reconcile. For anything
else `PlainReader.open` answers None and the caller opens the `Ledger`, which creates, migrates, warns and
reconciles as it always has.
"""
from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from . import ledger_counts, ledger_report, ledger_sqlite
from .ledger_reads import CURRENT_META, READS
from .ledger_sql import Prepared

STATES = ("pending", "running", "done", "failed", "skipped")

MIN_RATE_SECONDS = 60.0   # throughput and ETA only from done studies at least this far apart


def states(counted: dict[str, int]) -> dict[str, int]:
    """Studies per state (every state, zeros included) from the counters."""
    return {s: max(0, counted.get(f"state:{s}", 0)) for s in STATES}


def counts(cursor: Any) -> dict[str, int]:
    """The summary counters (ledger_counts.py): `state:<state>`, `<failed|skipped>:<class>`, `claims`, `retried`."""
    return ledger_counts.decode(cursor.execute(ledger_counts.READ).fetchall())


def summary(cursor: Any, dialect: str, *, window_seconds: float = 3600.0,
            studies_per_group: int | None = None) -> dict[str, Any]:
    """The `status --json` object: counts, failure groups, attempts, throughput and ETA.

    `cursor` is a DB-API cursor inside one read transaction (one snapshot), `dialect` "sqlite" or
    "postgresql". Counts come from the counters and the failure groups from a partial index, so the cost
    does not grow with the ledger. Each group lists its studies in queue order: all of them, or the first
    `studies_per_group` (its `count` is always the whole group's); with 0, no study row is read at all
    (no studies, no example, no log: what `run`'s progress line needs).
    """
    reads = READS[dialect]
    now = time.time()
    counted = counts(cursor)
    groups = _problem_groups(cursor, reads, counted, studies_per_group)
    n_done, first, last = reads["done_window"].run(cursor, {"p_since": now - window_seconds}).fetchone()
    durations = [d for (d,) in reads["recent_durations"].run(cursor, {"p_limit": 50}).fetchall()]
    # Held by a worker that stopped heartbeating: reclaimed at the next claim, `run` or `sync`.
    (expired,) = reads["leases_expired"].run(cursor, {"p_now": now}).fetchone()
    by_state = states(counted)

    def grouped(state: str) -> list[dict[str, Any]]:
        found = [g for (s, _), g in groups.items() if s == state]
        return sorted(found, key=lambda g: (-g["count"], g["error_class"]))

    out: dict[str, Any] = {
        "total": sum(by_state.values()),
        "states": by_state,
        "failures": grouped("failed"),
        "skipped": grouped("skipped"),
        "attempts": counted.get("claims", 0),
        "retried_studies": counted.get("retried", 0),
        "leases_expired": int(expired),
    }
    remaining = by_state["pending"] + by_state["running"]
    # Over less than a minute a rate is a guess: five studies done within one second are not 18,000 an hour.
    if n_done >= 2 and last - first >= MIN_RATE_SECONDS:
        rate = (n_done - 1) / (last - first) * 3600.0
        out["throughput_per_hour"] = round(rate, 2)
        out["eta_seconds"] = round(remaining / rate * 3600.0, 1) if remaining else 0.0
    if durations:
        import statistics   # only here: a ledger with done studies

        out["median_study_seconds"] = round(statistics.median(durations), 3)
    return out


def _problem_groups(cursor: Any, reads: dict[str, Prepared], counted: dict[str, int],
                    per_group: int | None) -> dict[tuple[str, str], dict[str, Any]]:
    """(state, error class) -> {error_class, count, studies, example, log} for failed and skipped studies."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for state, error_class, n in ledger_counts.problem_groups(counted):
        groups[(state, error_class)] = {"error_class": error_class, "count": n, "studies": [], "example": "",
                                        "log": None}
    if per_group == 0:   # counts only (the progress line): no row is read
        return groups
    for (state, error_class), group in groups.items():
        query = reads["problem_group_unknown" if error_class == "unknown" else "problem_group"]
        limit = 1 if per_group is None else per_group
        # (study_id, state, error_class, error_message, log_path), in queue order
        rows = query.run(cursor, {"p_state": state, "p_class": error_class, "p_limit": limit}).fetchall()
        if rows:   # the first in queue order speaks for the group: its message and log
            group["example"], group["log"] = rows[0][3] or "", rows[0][4]
        group["studies"] = [r[0] for r in rows] if per_group is not None else []
    if per_group is None:
        for state, error_class, study_id in reads["problems"].run(cursor).fetchall():
            group = groups.get((state, error_class or "unknown"))
            if group is not None:
                group["studies"].append(study_id)
    return groups


class PlainReader:
    """A current SQLite ledger opened with sqlite3 alone, inside one read transaction (one snapshot): the summary
    (`status`) and the review report's reads (ledger_report.py)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.cursor = connection.cursor()

    @classmethod
    def open(cls, ledger: str | os.PathLike[str]) -> "PlainReader | None":
        """The reader of a ledger (a database URL, or the path of a SQLite file), or None when only the
        `Ledger` may open it (see the module's docstring: another database, no file yet, a network
        filesystem, an older schema, Slurm submissions)."""
        path = ledger_sqlite.plain_path(ledger) if isinstance(ledger, str) else os.fspath(ledger)
        if (path is None or sqlite3.sqlite_version_info < ledger_sqlite.MIN_VERSION or not os.path.isfile(path)
                or ledger_sqlite.on_network(path)):
            return None
        connection = sqlite3.connect(path, **ledger_sqlite.connect_args(False))
        reader = cls(connection)
        try:
            ledger_sqlite.configure(connection, False)
            reader.cursor.execute("BEGIN")   # deferred: a read takes no write lock
            if reader._current() and not reader._submitted():
                return reader
        except BaseException:
            reader.close()
            raise
        reader.close()
        return None

    @classmethod
    def for_config(cls, config: Any) -> "PlainReader | None":
        """The reader of a project's ledger (its `db` URL, else its ledger file), or None (see `open`)."""
        return cls.open(config.ledger_file or config.db)

    def _current(self) -> bool:
        """Whether the ledger has the schema, counters and columns this batchseg makes (the Ledger's _create
        would find nothing to do)."""
        self.cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
        if not self.cursor.fetchone()[0]:
            return False
        found = dict(READS["sqlite"]["meta"].run(self.cursor).fetchall())
        return all(found.get(key) == value for key, value in CURRENT_META.items())

    def _submitted(self) -> bool:
        """Whether Slurm arrays were submitted: status then reconciles with Slurm, which writes."""
        return READS["sqlite"]["any_submission"].run(self.cursor).fetchone() is not None

    def summary(self, studies_per_group: int | None = None) -> dict[str, Any]:
        return summary(self.cursor, "sqlite", studies_per_group=studies_per_group)

    def report_cuts(self, parts: int) -> list[int]:
        return ledger_report.report_cuts(self.cursor, "sqlite", parts)

    def report_rows(self, page_size: int = ledger_report.PAGE, *, first_seq: int | None = None,
                    end_seq: int | None = None) -> Iterator[dict[str, Any]]:
        return ledger_report.report_rows(self.connection, "sqlite", page_size=page_size, first_seq=first_seq,
                                         end_seq=end_seq)

    def close(self) -> None:
        try:
            self.connection.rollback()   # ends the read transaction; nothing was written
        finally:
            self.connection.close()
