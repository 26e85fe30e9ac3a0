"""Claim+complete cycles per second of the ledger, with several processes at once, next to plain SQL.

    python benchmarks/ledger.py [--studies 4000] [--procs 1,4,8] [--pg URL] [--repeat 3]

For each (backend, processes) it runs the same work twice on a fresh ledger made by batchseg: once through
`Ledger.claim` / `Ledger.complete`, once as a plain sqlite3 or psycopg script that sends the same SQL (the same
transactions, statements and locking; the ledger's triggers fire for both). It prints cycles/s of each, their
ratio (medians of --repeat alternating runs), and whether any study was claimed twice.
SQLite runs in WAL mode (local disk) and in the rollback-journal mode used on network filesystems.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

from batchseg import ledger as ledger_module
from batchseg.ledger_counts import FOLD as LEDGER_FOLD
from plain_sql import CLAIM, COMPLETE, EXPIRED, FOLD, HISTORY

assert FOLD == LEDGER_FOLD, "plain_sql.FOLD must be the statement batchseg's claims run"

def _open_ledger(url: str, network: bool) -> "ledger_module.Ledger":
    with mock.patch("batchseg.ledger_sqlite.filesystem_type", lambda _p: "nfs" if network else "ext4"):
        import warnings

        warnings.simplefilter("ignore")
        return ledger_module.Ledger(url)


def _batchseg_worker(url: str, network: bool, start: Any, out: Any, pid: int) -> None:
    ledger = _open_ledger(url, network)
    who = ledger_module.WorkerInfo("bench", pid)
    start.wait()
    claimed = []
    while (claim := ledger.claim(who, 600)) is not None:
        claimed.append(claim.study_id)
        ledger.complete(claim, {}, {})
    out.put(claimed)
    ledger.close()


def _plain_sqlite_worker(url: str, network: bool, start: Any, out: Any, pid: int) -> None:
    import sqlite3

    conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=300 if network else 60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE" if network else "PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL" if network else "PRAGMA synchronous=NORMAL")
    expired, claim_sql = EXPIRED.format(p="?"), CLAIM.format(p="?", lock="")
    history, complete = HISTORY.format(p="?"), COMPLETE.format(p="?")
    start.wait()
    claimed = []
    while True:
        now, token = time.time(), uuid.uuid4().hex
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(expired, (now,)).fetchall()
        row = conn.execute(claim_sql, (token, now, now, now + 600, "bench", pid, None, None, None, None,
                                       now)).fetchone()
        if row is None:
            conn.execute("COMMIT")
            break
        conn.execute(history, (row[0], token, "claimed", "pending", "running", now, "bench", pid, None, None, None,
                               None, None, None, None, None))
        conn.execute("COMMIT")
        claimed.append(row[0])
        done = time.time()
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute(complete, (done, done, "{}", "{}", row[0], token)).rowcount == 1:
            conn.execute(history, (row[0], token, "done", "running", "done", done, "bench", pid, None, None, None,
                                   None, None, None, None, done - now))
        conn.execute("COMMIT")
    conn.close()
    out.put(claimed)


def _plain_psycopg_worker(url: str, _network: bool, start: Any, out: Any, pid: int) -> None:
    import psycopg

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    expired, claim_sql = EXPIRED.format(p="%s"), CLAIM.format(p="%s", lock=" FOR UPDATE SKIP LOCKED")
    history, complete = HISTORY.format(p="%s"), COMPLETE.format(p="%s")
    start.wait()
    claimed = []
    with conn.cursor() as cur:
        while True:
            now, token = time.time(), uuid.uuid4().hex
            cur.execute(expired, (now,))
            cur.fetchall()
            cur.execute(claim_sql, (token, now, now, now + 600, "bench", pid, None, None, None, None, now))
            row = cur.fetchone()
            if row is not None:
                cur.execute(history, (row[0], token, "claimed", "pending", "running", now, "bench", pid, None, None,
                                      None, None, None, None, None, None))
            cur.execute(FOLD)
            conn.commit()
            if row is None:
                break
            claimed.append(row[0])
            done = time.time()
            cur.execute(complete, (done, done, "{}", "{}", row[0], token))
            if cur.rowcount == 1:
                cur.execute(history, (row[0], token, "done", "running", "done", done, "bench", pid, None, None,
                                      None, None, None, None, None, done - now))
            conn.commit()
    conn.close()
    out.put(claimed)


def run(url: str, studies: int, procs: int, network: bool, target: Any) -> tuple[float, int]:
    ledger = _open_ledger(url, network)
    ledger.add_studies(ledger_module.StudyRow(str(i)) for i in range(studies))
    ledger.close()
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=target, args=(url, network, start, out, p)) for p in range(procs)]
    for w in workers:
        w.start()
    time.sleep(1.0 + 0.3 * procs)  # let every process import and connect before the clock starts
    t0 = time.perf_counter()
    start.set()
    claimed = [sid for _ in workers for sid in out.get()]
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.join()
    return len(claimed) / elapsed, len(claimed) - len(set(claimed))


def _fresh_pg(url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    ledger_module.metadata.drop_all(engine)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=4000)
    parser.add_argument("--procs", default="1,4,8")
    parser.add_argument("--pg", default="", help="PostgreSQL URL (its tables are dropped and recreated)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (batchseg, plain) pair; medians shown")
    args = parser.parse_args()
    print(f"{'backend':36s} {'procs':>5s} {'batchseg':>10s} {'plain SQL':>10s} {'ratio':>6s}  double claims")
    for procs in (int(p) for p in args.procs.split(",")):
        backends = [("sqlite WAL+NORMAL (local disk)", False, _plain_sqlite_worker),
                    ("sqlite DELETE+FULL (network mode)", True, _plain_sqlite_worker)]
        if args.pg:
            backends.append(("postgresql SKIP LOCKED", False, _plain_psycopg_worker))
        for label, network, plain in backends:
            found: dict[Any, list[float]] = {_batchseg_worker: [], plain: []}
            doubles = 0
            for _ in range(args.repeat):   # alternating, so both see the same machine; the median of each
                for target in found:
                    with tempfile.TemporaryDirectory() as tmp:
                        url = args.pg if "postgresql" in label else f"sqlite:///{Path(tmp) / 'l.sqlite'}"
                        if "postgresql" in label:
                            _fresh_pg(url)
                        rate, twice = run(url, args.studies, procs, network, target)
                    found[target].append(rate)
                    doubles += twice
            rates = [statistics.median(v) for v in found.values()]
            print(f"{label:36s} {procs:5d} {rates[0]:8.0f}/s {rates[1]:8.0f}/s {rates[0] / rates[1]:5.2f}x  "
                  f"{doubles}", flush=True)
    print(f"(cycles per second: one claim and one done each; ratio = batchseg / plain; machine load "
          f"{os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
