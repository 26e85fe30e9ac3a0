"""The review report's reads of the ledger, on a plain driver connection: where to cut the queue into the report's
runs, and every study of a run in queue order.

One code path for `Ledger` (on a connection of its engine) and for the plain reader behind `batchseg report` on a
SQLite ledger (ledger_summary.PlainReader, no SQLAlchemy to import); the SQL is ledger.py's Core statements
compiled ahead of time (ledger_reads.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from . import json_text
from .ledger_reads import READS

PAGE = 2000
# The first and last queue place (seq) the column can hold: the bounds of a run without one (PostgreSQL's
# INTEGER has 32 bits, SQLite's 64).
_ENDS = {"sqlite": (-(1 << 63), (1 << 63) - 1), "postgresql": (-(1 << 31), (1 << 31) - 1)}


def report_cuts(cursor: Any, dialect: str, parts: int) -> list[int]:
    """Queue places (seq) that cut the ledger into `parts` runs with about as many done studies each (a done
    study is most of the report's work, and a cohort mid-run has its pending studies at the back of the
    queue), for report_rows' ranges; fewer cuts when there are fewer done studies than parts."""
    reads = READS[dialect]
    (done,) = reads["done_count"].run(cursor).fetchone()
    if done < parts:
        return []
    cuts = set()
    for k in range(1, parts):
        found = reads["done_seq_at"].run(cursor, {"p_offset": done * k // parts}).fetchone()
        if found is not None:
            cuts.add(found[0])
    return sorted(cuts)


def report_rows(connection: Any, dialect: str, *, page_size: int = PAGE, first_seq: int | None = None,
                end_seq: int | None = None) -> Iterator[dict[str, Any]]:
    """Every study with first_seq <= seq < end_seq (None: no bound) in queue order, streamed, with what the
    report says of its attempts; `connection` is a DB-API connection inside one read transaction.

    The studies come through a streaming cursor (server-side on PostgreSQL), `page_size` rows at a time, so
    memory does not grow with the ledger. Each row holds REPORT_STUDIES' columns (`timings` decoded):
    `attempt_seconds` is the sum of every attempt's claim-to-outcome seconds (None when no attempt ended), and
    `attempt_errors` the error classes of its failed or lost attempts in order. The worker columns are the last
    claim's (every claim writes them).
    """
    reads = READS[dialect]
    errors: dict[str, list[str]] = {}
    cursor = connection.cursor()
    try:
        for study_id, error_class in reads["attempt_errors"].run(cursor).fetchall():
            errors.setdefault(study_id, []).append(error_class or "unknown")
    finally:
        cursor.close()
    lowest, highest = _ENDS[dialect]
    bounds = {"p_first": lowest if first_seq is None else int(first_seq),
              "p_last": highest if end_seq is None else int(end_seq) - 1}
    cursor = connection.cursor(name="report_rows") if dialect == "postgresql" else connection.cursor()
    try:
        reads["report_studies"].run(cursor, bounds)
        keys = tuple(column[0] for column in cursor.description)
        loads = json_text.loads
        while page := cursor.fetchmany(page_size):
            for row in page:
                study = dict(zip(keys, row))
                if study["timings"]:
                    study["timings"] = loads(study["timings"])
                study["attempt_errors"] = errors.pop(study["study_id"], [])
                yield study
    finally:
        cursor.close()
