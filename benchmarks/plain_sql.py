"""Plain sqlite3 / psycopg scripts that do what batchseg's commands do, with the same SQL and no batchseg:
the yardstick that benchmarks/scale.py sets batchseg's figures beside.

    python benchmarks/plain_sql.py status DB_URL
    python benchmarks/plain_sql.py claims DB_URL --n 300           # claim+done cycles; claim latency
    python benchmarks/plain_sql.py init DATASET_DIR DB_URL          # the series CSV into the ledger
    python benchmarks/plain_sql.py report-csv DB_URL RESULTS_DIR OUT.csv

DB_URL is a SQLAlchemy-style URL (sqlite:///path or postgresql+psycopg://...); the ledger must exist (made by
batchseg or by benchmarks/scale_build.py), so its triggers and indexes are the ones batchseg runs against.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

# The SQL, written out by hand: what batchseg's hot path sends (benchmarks/ledger.py uses these too).
EXPIRED = "SELECT study_id, token FROM studies WHERE state = 'running' AND lease_expires_at < {p}"
CLAIM = (
    "UPDATE studies SET state = 'running', token = {p}, attempts = attempts + 1, claimed_at = {p}, "
    "heartbeat_at = {p}, lease_expires_at = {p}, worker_host = {p}, worker_pid = {p}, slurm_job_id = {p}, "
    "slurm_array_job_id = {p}, slurm_array_task_id = {p}, slurm_restart_count = {p}, error_class = NULL, "
    "error_message = NULL, log_path = NULL, updated_at = {p} "
    "WHERE study_id = (SELECT study_id FROM studies WHERE state = 'pending' ORDER BY seq LIMIT 1{lock}) "
    "AND state = 'pending' RETURNING study_id, attempts, series_id, input_path")
HISTORY = ("INSERT INTO history (study_id, token, event, from_state, to_state, at, host, pid, slurm_job_id, "
           "slurm_array_job_id, slurm_array_task_id, slurm_restart_count, cuda_visible_devices, error_class, "
           "message, duration) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})")
COMPLETE = ("UPDATE studies SET state = 'done', token = NULL, lease_expires_at = NULL, finished_at = {p}, "
            "updated_at = {p}, outputs = {p}, timings = {p} "
            "WHERE study_id = {p} AND token = {p} AND state = 'running'")


# PostgreSQL: fold the counter deltas, unless another transaction is folding (batchseg.ledger_counts.FOLD).
FOLD = ("WITH gone AS (DELETE FROM count_deltas WHERE (SELECT pg_try_advisory_xact_lock(27691700229530471)) "
        "RETURNING name, delta) INSERT INTO counts (name, n) SELECT name, sum(delta) FROM gone GROUP BY name "
        "ORDER BY name ON CONFLICT (name) DO UPDATE SET n = counts.n + excluded.n")


class Db:
    """A DB-API connection and its placeholder, from a URL."""

    def __init__(self, url: str) -> None:
        self.pg = url.startswith("postgresql")
        if self.pg:
            import psycopg

            self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
            self.p = "%s"
        else:
            import sqlite3

            self.conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=60, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.p = "?"

    def begin(self, write: bool) -> None:
        if not self.pg:
            self.conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def commit(self) -> None:
        self.conn.commit() if self.pg else self.conn.execute("COMMIT")

    def rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        cur = self.conn.cursor()
        cur.execute(sql.replace("?", self.p), args)
        return cur.fetchall()


def status(url: str) -> None:
    """The counters, three studies per failure group, the last hour's done events, recent durations."""
    db = Db(url)
    db.begin(write=False)
    counts = dict(db.rows("SELECT name, sum(n) FROM (SELECT name, n FROM counts UNION ALL SELECT name, delta "
                          "FROM count_deltas) AS c GROUP BY name"))
    groups = {}
    for name, n in counts.items():
        state, _, error_class = name.partition(":")
        if state in ("failed", "skipped") and n:
            groups[name] = db.rows("SELECT study_id, state, error_class, error_message, log_path FROM studies "
                                   "WHERE state IN ('failed', 'skipped') AND state = ? AND error_class = ? "
                                   "ORDER BY seq LIMIT 4", (state, error_class))
    window = db.rows("SELECT count(*), min(at), max(at) FROM history WHERE event = 'done' AND at >= ?",
                     (time.time() - 3600,))
    durations = [d for (d,) in db.rows("SELECT duration FROM history WHERE event = 'done' AND duration IS NOT NULL "
                                       "ORDER BY at DESC LIMIT 50")]
    db.commit()
    states = {k[6:]: v for k, v in counts.items() if k.startswith("state:")}
    print(f"states {states}, {len(groups)} failure groups, done in the last hour {window[0][0]}, "
          f"median {statistics.median(durations) if durations else None}")


def claims(url: str, n: int) -> None:
    """n claim+done cycles as a worker makes them; prints the claim latency."""
    db = Db(url)
    p, lock = db.p, " FOR UPDATE SKIP LOCKED" if db.pg else ""
    expired, claim_sql = EXPIRED.format(p=p), CLAIM.format(p=p, lock=lock)
    history, complete = HISTORY.format(p=p), COMPLETE.format(p=p)
    cur = db.conn.cursor()
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        now, token = time.time(), uuid.uuid4().hex
        db.begin(write=True)
        cur.execute(expired, (now,))
        for study, old in cur.fetchall():
            # What the ledger does for an expired lease: fence by the token, requeue at the back, a history row.
            cur.execute(f"UPDATE studies SET state = 'pending', token = NULL, lease_expires_at = NULL, "
                        f"error_class = 'worker.lost', error_message = 'lease expired', updated_at = {p}, "
                        f"seq = (SELECT max(seq) FROM studies) + 1 WHERE study_id = {p} AND token = {p} "
                        f"AND state = 'running'", (now, study, old))
            cur.execute(history, (study, old, "lost", "running", "pending", now, None, None, None, None, None, None,
                                  None, "worker.lost", "lease expired", None))
        cur.execute(claim_sql, (token, now, now, now + 600, "bench", 1, None, None, None, None, now))
        row = cur.fetchone()
        if row is not None:
            cur.execute(history, (row[0], token, "claimed", "pending", "running", now, "bench", 1, None, None, None,
                                  None, None, None, None, None))
        if db.pg:
            cur.execute(FOLD)
        db.commit()
        latencies.append(time.perf_counter() - t0)
        if row is None:
            break
        done = time.time()
        db.begin(write=True)
        cur.execute(complete, (done, done, "{}", "{}", row[0], token))
        if cur.rowcount == 1:
            cur.execute(history, (row[0], token, "done", "running", "done", done, "bench", 1, None, None, None,
                                  None, None, None, None, done - now))
        db.commit()
    print_latency("plain", latencies)


def print_latency(who: str, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    print(json.dumps({"who": who, "claims": len(ordered), "p50_ms": round(statistics.median(ordered) * 1e3, 3),
                      "p99_ms": round(p99 * 1e3, 3), "max_ms": round(ordered[-1] * 1e3, 3),
                      "first_ms": round(latencies[0] * 1e3, 3)}))


def init(dataset: Path, url: str) -> None:
    """The series CSV's studies into the ledger: new ones added (pending, or skipped without a T2), others kept."""
    by_study: dict[str, list[tuple[str, str]]] = {}
    with open(dataset / "train_series_descriptions.csv", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        i, j, k = (header.index(c) for c in ("study_id", "series_id", "series_description"))
        for row in reader:
            by_study.setdefault(row[i].strip(), []).append((row[j].strip(), row[k].strip()))
    db = Db(url)
    db.begin(write=True)
    known = {sid for (sid,) in db.rows("SELECT study_id FROM studies")}
    seq = db.rows("SELECT max(seq) FROM studies")[0][0] or 0
    now = time.time()
    images = str(dataset.resolve() / "train_images")
    studies, events = [], []
    for study in sorted(by_study, key=int):
        if study in known:
            continue
        seq += 1
        t2 = [s for s, d in by_study[study] if d == "Sagittal T2/STIR"]
        if t2:
            series = max(t2, key=int)
            studies.append((study, seq, series, "Sagittal T2/STIR", "the only Sagittal T2/STIR series",
                            os.path.join(images, study, series), "pending", 0, None, None, now, now))
            events.append((study, "added", "pending", now, None, None))
        else:
            message = f"study {study}: no Sagittal T2/STIR series"
            studies.append((study, seq, None, None, None, None, "skipped", 0, "input.no_series", message, now, now))
            events.append((study, "added", "skipped", now, "input.no_series", message))
    cur = db.conn.cursor()
    if studies:
        if db.pg:
            with cur.copy("COPY studies (study_id, seq, series_id, series_description, selection_reason, input_path,"
                          " state, attempts, error_class, error_message, added_at, updated_at) FROM STDIN") as copy:
                for row in studies:
                    copy.write_row(row)
            with cur.copy("COPY history (study_id, event, to_state, at, error_class, message) FROM STDIN") as copy:
                for row in events:
                    copy.write_row(row)
        else:
            cur.executemany("INSERT INTO studies (study_id, seq, series_id, series_description, selection_reason, "
                            "input_path, state, attempts, error_class, error_message, added_at, updated_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", studies)
            cur.executemany("INSERT INTO history (study_id, event, to_state, at, error_class, message) "
                            "VALUES (?, ?, ?, ?, ?, ?)", events)
    db.commit()
    print(f"{len(by_study)} studies listed, {len(studies)} added, {len(known)} already there")


REPORT_ERRORS = "SELECT study_id, error_class FROM history WHERE event IN ('failed', 'lost') ORDER BY id"
REPORT_STUDIES = (
    "SELECT s.study_id, s.series_id, s.state, s.attempts, s.error_class, s.error_message, s.log_path, s.timings, "
    "s.worker_host, s.worker_pid, s.slurm_array_job_id, s.slurm_array_task_id, s.findings, s.attempt_seconds "
    "FROM studies s ORDER BY s.seq")


def identity(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def report_csv(url: str, results: Path, out: Path) -> None:
    """Every study in queue order with its attempts and its done files, one CSV row each (the report's SQL)."""
    db = Db(url)
    db.begin(write=False)
    errors: dict[str, list[str]] = {}
    for sid, error_class in db.rows(REPORT_ERRORS):
        errors.setdefault(sid, []).append(error_class or "unknown")
    # PostgreSQL: a server-side cursor, so rows come in batches, not all at once.
    cur = db.conn.cursor(name="studies") if db.pg else db.conn.cursor()
    cur.execute(REPORT_STUDIES)
    metadata, centroids = str(results / "metadata"), str(results / "centroids")
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("study_id", "series_id", "state", "attempts", "error_class", "error_message", "log_path",
                         "seconds", "attempt_seconds", "attempt_errors", "worker", "lumbar_count", "candidates",
                         "vertebrae"))
        while True:
            page = cur.fetchmany(2000)
            if not page:
                break
            for sid, series, state, attempts, error_class, message, log, timings, host, pid, job, task, findings, \
                    secs in page:
                lumbar = candidates = vertebrae = ""
                if state == "done":
                    # The ledger's digest while both files are the ones it was made of, else the files.
                    meta_path, labels_path = f"{metadata}/{sid}_metadata.json", f"{centroids}/{sid}_vertebra_labels.json"
                    digest = json.loads(findings) if findings else None
                    try:
                        if digest is not None and [identity(meta_path), identity(labels_path)] == digest["id"]:
                            lstv, labels = digest.get("lstv") or {}, digest["vertebra_labels"]
                        else:
                            with open(meta_path, "rb") as f:
                                lstv = json.loads(f.read()).get("lstv") or {}
                            with open(labels_path, "rb") as f:
                                labels = json.loads(f.read())
                        vertebrae = "; ".join(labels.values())
                        lumbar = lstv.get("lumbar_count", "")
                        candidates = "; ".join(str(c.get("pattern")) for c in lstv.get("candidates") or [])
                    except OSError:
                        pass
                worker = f"{job}_{task}@{host}" if job else (f"{host}:{pid}" if host else "")
                writer.writerow((sid, series, state, attempts, error_class, message, log,
                                 json.loads(timings).get("total") if timings else "",
                                 round(secs, 3) if secs is not None else "", "; ".join(errors.get(sid, [])),
                                 worker, lumbar, candidates, vertebrae))
    db.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("status").add_argument("url")
    c = sub.add_parser("claims")
    c.add_argument("url")
    c.add_argument("--n", type=int, default=300)
    i = sub.add_parser("init")
    i.add_argument("dataset", type=Path)
    i.add_argument("url")
    r = sub.add_parser("report-csv")
    r.add_argument("url")
    r.add_argument("results", type=Path)
    r.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.what == "status":
        status(args.url)
    elif args.what == "claims":
        claims(args.url, args.n)
    elif args.what == "init":
        init(args.dataset, args.url)
    else:
        report_csv(args.url, args.results, args.out)


if __name__ == "__main__":
    main()
