"""Build a large batchseg project to measure against: a dataset CSV, a ledger with a realistic mix of states
and history, and (optionally) the result files of its done studies.

    python benchmarks/scale_build.py DIR --studies 1000000 [--pg URL] [--files] [--seed 0]
    python benchmarks/scale_build.py DIR --findings-only     # digests for a build made before they existed

Writes
  DIR/data/train_series_descriptions.csv   RSNA layout: 3-4 series per study, 1% of studies without a
                                           Sagittal T2/STIR series, 0.2% with two of them
  DIR/project/batchseg.toml + ledger.sqlite (or the tables of the PostgreSQL database --pg, dropped first)
  DIR/project/results/{metadata,centroids}/ with --files: every done study's metadata and vertebra labels, and
                                        their findings digests in the ledger (as a worker records them)

The ledger is what `batchseg init` followed by a long run would leave (the states and history rows the ledger's
own transitions write, in the same columns), written with plain sqlite3 / psycopg COPY because going through the
ledger's API one claim at a time would take hours at 1M. The ledger's triggers fire as the rows go in, so its
counters and each study's attempt seconds are what batchseg itself would have kept. The mix, of all studies:
  skipped 1% (no series) · done 76.5% (of them 5% after one retryable failure, 1% after a lost worker,
  0.5% after a release) · failed 3% (2.4% permanent at once, 0.6% retryable until attempts ran out) ·
  pending 19% (0.5% of them after a retryable failure, at the back of the queue) · running 0.02%, plus 64
  running studies whose lease ran out (a claim must expire them). The done studies finished over 30 days,
  the last hour's at ~1000 studies/h. Of the done studies' result files (the findings made by batchseg's own
  measure() on small label maps), 4% are LSTV candidates, 2% carry a caveat, 0.5% are not assessable.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import random
import sqlite3
import sys
import time
from pathlib import Path

ERRORS_PERMANENT = ("input.bad_dicom", "input.geometry", "segment.empty", "input.not_sagittal")
ERRORS_RETRY = ("segment.oom", "segment.error", "output.io")
OUTPUTS = ("nifti", "vert_mask", "spine_mask", "ctd", "centroids", "vertebra_labels", "qc", "metadata")
STUDY_COLUMNS = ("study_id", "seq", "series_id", "series_description", "selection_reason", "input_path", "state",
                 "attempts", "token", "claimed_at", "heartbeat_at", "lease_expires_at", "worker_host", "worker_pid",
                 "slurm_job_id", "slurm_array_job_id", "slurm_array_task_id", "slurm_restart_count", "error_class",
                 "error_message", "log_path", "timings", "outputs", "added_at", "updated_at", "finished_at")
HISTORY_COLUMNS = ("study_id", "token", "event", "from_state", "to_state", "at", "host", "pid", "slurm_job_id",
                   "slurm_array_job_id", "slurm_array_task_id", "slurm_restart_count", "cuda_visible_devices",
                   "error_class", "message", "duration")


def write_dataset(root: Path, n: int, rng: random.Random) -> list[tuple[str, list[tuple[str, str]]]]:
    """The series CSV; returns [(study, [(series, description)])] sorted by study id (init's order)."""
    ids = sorted(rng.sample(range(4_000_000, 4_294_967_295), n))
    studies = []
    series_id = 10_000_000
    for sid in ids:
        series = []
        roll = rng.random()
        kinds = ["Sagittal T1", "Axial T2"]
        if roll >= 0.01:
            kinds.append("Sagittal T2/STIR")
        if roll > 0.998:
            kinds.append("Sagittal T2/STIR")
        if rng.random() < 0.17:
            kinds.append("Axial T2")
        for kind in kinds:
            series_id += rng.randint(1, 5000)
            series.append((str(series_id), kind))
        studies.append((str(sid), series))
    rows = [(study, s, d) for study, series in studies for s, d in series]
    rng.shuffle(rows)   # the Kaggle CSV is not sorted by study
    root.mkdir(parents=True, exist_ok=True)
    with (root / "train_series_descriptions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("study_id", "series_id", "series_description"))
        writer.writerows(rows)
    return studies


def plan(studies: list[tuple[str, list[tuple[str, str]]]], data: Path, rng: random.Random,
         now: float) -> tuple[list[tuple], list[tuple], list[tuple[str, str]]]:
    """Study rows, history rows and [(done study, kind of findings)] for a ledger that has been busy."""
    n = len(studies)
    start = now - 30 * 86400
    study_rows: list[tuple] = []
    history: list[tuple] = []
    done: list[tuple[str, str]] = []
    extra_seq = n
    host_names = [f"gpu{i:03d}" for i in range(64)]
    with_t2 = [i for i, (_, series) in enumerate(studies) if any(d == "Sagittal T2/STIR" for _, d in series)]
    expired = set(rng.sample(with_t2, min(64, len(with_t2) // 20)))

    def who(t: float) -> tuple:
        task = int(t) % 997
        return (host_names[task % 64], 1000 + task, str(5_000_000 + task), "4990000", str(task), 0, "0")

    def attempt(study: str, tok: str, t: float, end: str, to_state: str, seconds: float,
                error_class: str | None = None, message: str | None = None) -> None:
        """The claimed row and the row that ended the attempt `seconds` later."""
        history.append((study, tok, "claimed", "pending", "running", t) + who(t) + (None, None, None))
        history.append((study, tok, end, "running", to_state, t + seconds) + who(t) + (error_class, message, seconds))

    for seq, (study, series) in enumerate(studies, 1):
        t2 = [s for s, d in series if d == "Sagittal T2/STIR"]
        added = start - 3600 + seq * 1e-3
        if not t2:
            found = ", ".join(sorted({d for _, d in series}))
            msg = f"study {study}: no Sagittal T2/STIR series (found: {found})"
            study_rows.append((study, seq, None, None, None, None, "skipped", 0, None, None, None, None, None, None,
                               None, None, None, None, "input.no_series", msg, None, None, None, added, added, None))
            history.append((study, None, "added", None, "skipped", added) + (None,) * 7 + ("input.no_series", msg, None))
            continue
        chosen = max(t2, key=int)
        reason = "the only Sagittal T2/STIR series" if len(t2) == 1 else (
            f"2 Sagittal T2/STIR series: {t2[0]} (0 slices), {t2[1]} (0 slices); chose {chosen}, "
            "most slices then highest id")
        path = str(data / "train_images" / study / chosen)
        history.append((study, None, "added", None, "pending", added) + (None,) * 10)
        roll = rng.random()
        base = (study, seq, chosen, "Sagittal T2/STIR", reason, path)
        if roll < 0.19 / 0.99 or seq - 1 in expired:
            running = seq - 1 in expired
            if not running and rng.random() < 0.005:
                t = start + rng.random() * 29 * 86400
                tok = f"{rng.getrandbits(128):032x}"
                attempt(study, tok, t, "failed", "pending", 30.0, "segment.oom", f"study {study}: CUDA out of memory")
                extra_seq += 1
                study_rows.append(base[:1] + (extra_seq,) + base[2:] + ("pending", 1, None, t, t + 30, None)
                                  + who(t)[:6] + ("segment.oom", f"study {study}: CUDA out of memory", None, None,
                                                  None, added, t + 30, None))
                continue
            if not running:
                study_rows.append(base + ("pending", 0) + (None,) * 15 + (added, added, None))
                continue
            # A running study whose worker died: its lease ran out an hour ago.
            t = now - 2 * 3600
            tok = f"{rng.getrandbits(128):032x}"
            history.append((study, tok, "claimed", "pending", "running", t) + who(t) + (None, None, None))
            study_rows.append(base + ("running", 1, tok, t, t + 60, t + 900) + who(t)[:6]
                              + (None, None, None, None, None, added, t, None))
            continue
        # Claimed at least once: done or failed.
        t = start + (now - start - 3600) * (seq / n) if rng.random() > 0.0013 else now - 3600 * rng.random()
        attempts = 0
        roll = rng.random()
        if roll < 0.0002:   # still running, lease fresh
            tok = f"{rng.getrandbits(128):032x}"
            t = now - 20
            history.append((study, tok, "claimed", "pending", "running", t) + who(t) + (None, None, None))
            study_rows.append(base + ("running", 1, tok, t, t, t + 900) + who(t)[:6]
                              + (None, None, None, None, None, added, t, None))
            continue
        failed_roll = rng.random()
        if failed_roll < 0.03 / 0.81:
            retry = failed_roll < 0.006 / 0.81
            classes = [rng.choice(ERRORS_RETRY)] * 3 if retry else [rng.choice(ERRORS_PERMANENT)]
            for i, cls in enumerate(classes):
                tok = f"{rng.getrandbits(128):032x}"
                end = "failed" if i == len(classes) - 1 else "pending"
                attempt(study, tok, t, "failed", end, 25.0, cls, f"study {study}: {cls} happened here")
                t += 3600
            log = f"/scratch/project/logs/studies/{study}_attempt{len(classes)}_0badc0de.log"
            study_rows.append(base + ("failed", len(classes), None, t - 3600, t - 3575, None) + who(t - 3600)[:6]
                              + (classes[-1], f"study {study}: {classes[-1]} happened here", log, None, None,
                                 added, t - 3575, t - 3575))
            continue
        before = rng.random()
        if before < 0.05:
            tok = f"{rng.getrandbits(128):032x}"
            cls = rng.choice(ERRORS_RETRY)
            attempt(study, tok, t, "failed", "pending", 20.0, cls, f"study {study}: {cls} the first time")
            attempts += 1
            t += 600
        elif before < 0.06:
            tok = f"{rng.getrandbits(128):032x}"
            attempt(study, tok, t, "lost", "pending", 900.0, "worker.lost",
                    "lease expired: the worker stopped sending heartbeats")
            attempts += 1
            t += 1200
        elif before < 0.065:
            tok = f"{rng.getrandbits(128):032x}"
            attempt(study, tok, t, "released", "pending", 50.0, None, "released on SIGUSR1")
            t += 300
        tok = f"{rng.getrandbits(128):032x}"
        seconds = 18.0 + 10 * rng.random()
        attempts += 1
        attempt(study, tok, t, "done", "done", seconds)
        outputs = {name: f"/scratch/project/results/{name}/{study}_{name}" for name in OUTPUTS}
        timings = {"convert": 0.4, "segment": round(seconds - 1.0, 4), "measure": 0.05, "qc": 0.1,
                   "publish": 0.01, "total": round(seconds - 0.3, 4)}
        study_rows.append(base + ("done", attempts, None, t, t + seconds - 10, None) + who(t)[:6]
                          + (None, None, None, json.dumps(timings), json.dumps(outputs), added, t + seconds,
                             t + seconds))
        kind_roll = rng.random()
        done.append((study, "candidate" if kind_roll < 0.04 else "caveat" if kind_roll < 0.06
                     else "unassessable" if kind_roll < 0.065 else "normal"))
    return study_rows, history, done


def write_sqlite(path: Path, study_rows: list[tuple], history: list[tuple]) -> None:
    from batchseg.ledger import Ledger

    Ledger(f"sqlite:///{path}").close()   # the schema, exactly as batchseg makes it
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO studies ({', '.join(STUDY_COLUMNS)}) VALUES ({', '.join('?' * len(STUDY_COLUMNS))})",
                     study_rows)
    history.sort(key=lambda h: h[5])   # rows in the order the ledger would have written them
    conn.executemany(f"INSERT INTO history ({', '.join(HISTORY_COLUMNS)}) "
                     f"VALUES ({', '.join('?' * len(HISTORY_COLUMNS))})", history)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def write_pg(url: str, study_rows: list[tuple], history: list[tuple]) -> None:
    import psycopg
    from sqlalchemy import create_engine

    from batchseg.ledger import Ledger, metadata

    engine = create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    Ledger(url).close()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    history.sort(key=lambda h: h[5])
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY studies ({', '.join(STUDY_COLUMNS)}) FROM STDIN") as copy:
                for row in study_rows:
                    copy.write_row(row)
            with cur.copy(f"COPY history ({', '.join(HISTORY_COLUMNS)}) FROM STDIN") as copy:
                for row in history:
                    copy.write_row(row)
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE studies")
        conn.execute("VACUUM ANALYZE history")


@functools.lru_cache(maxsize=None)
def _measured(kind: str) -> tuple[dict, dict]:
    """(lstv findings, vertebra labels) exactly as batchseg's measure() writes them, for a stacked-box spine of
    this kind: normal (T10-L5, S1), candidate (an L6), caveat (normal with a stray fragment of L3), unassessable
    (T12-L5, no sacrum in view)."""
    import numpy as np

    from batchseg.measures import measure

    def spine(vertebrae: list[int]) -> list[int]:
        return [x for i, v in enumerate(vertebrae) for x in ((v, 100 + v) if i + 1 < len(vertebrae) else (v,))]

    labels = {"normal": spine([17, 18, 19, 20, 21, 22, 23, 24]) + [26],
              "caveat": spine([17, 18, 19, 20, 21, 22, 23, 24]) + [26],
              "candidate": spine([17, 18, 19, 20, 21, 22, 23, 24, 25]) + [26],
              "unassessable": spine([19, 20, 21, 22, 23, 24])}[kind]
    heights = [16 if v == 26 else 3 if v > 100 else 8 for v in labels]
    volume = np.zeros((20, 12, sum(heights) + 4), np.int16)
    z = 2
    for v, h in zip(labels, heights):
        volume[4:16, 2:10, z:z + h] = v
        z += h
    if kind == "caveat":
        volume[0:2, 0:2, 0:2] = 22
    affine = np.array([[0.0, -1.0, 0.0, 6.0], [-1.0, 0.0, 0.0, 10.0], [0.0, 0.0, -2.0, 80.0], [0.0, 0.0, 0.0, 1.0]])
    found = measure(volume, affine)
    return found.lstv_json(), found.vertebra_labels_json()


def findings(study: str, kind: str) -> tuple[dict, dict]:
    """(metadata, vertebra labels) as the pipeline writes them for one done study."""
    lstv, labels = _measured(kind)
    meta = {
        "study_id": study, "series_id": "1", "attempt": 1,
        "input": {"series_dir": f"/data/rsna/train_images/{study}/1",
                  "conversion": {"shape": [17, 512, 512], "spacing": [0.6, 0.6, 4.5], "orientation": "PIR",
                                 "slices_used": list(range(1, 18)), "slices_dropped": [], "warnings": []}},
        "segmenter": {"name": "spineps", "version": "2.1.3", "labels_anatomical": True, "note": ""},
        "lstv": lstv, "structures": len(labels),
        "versions": {"batchseg": "0.1.0", "python": "3.11.7", "numpy": "1.26.4", "nibabel": "5.4.2",
                     "pydicom": "3.0.2"},
        "host": "gpu001", "started_at": 1.7e9,
        "timings": {"convert": 0.4, "segment": 20.0, "measure": 0.05, "qc": 0.1, "total": 20.7},
        "outputs": {name: f"{study}_{name}" for name in OUTPUTS},
        "checksums": {name: "0" * 64 for name in OUTPUTS if name != "metadata"},
    }
    return meta, labels


def write_files(results: Path, done: list[tuple[str, str]]) -> None:
    (results / "metadata").mkdir(parents=True, exist_ok=True)
    (results / "centroids").mkdir(parents=True, exist_ok=True)
    for study, kind in done:
        meta, labels = findings(study, kind)
        with open(results / "metadata" / f"{study}_metadata.json", "w") as handle:
            json.dump(meta, handle, indent=2)
        with open(results / "centroids" / f"{study}_vertebra_labels.json", "w") as handle:
            json.dump(labels, handle, indent=2)


def record_findings(url: str, results: Path, done: list[str]) -> None:
    """Each done study's findings digest in the ledger, from its files, as the worker records it when done."""
    from batchseg.ledger import Ledger
    from batchseg.outputs import findings_digest

    ledger = Ledger(url)
    for start in range(0, len(done), 50_000):
        ledger.record_findings({study: findings_digest(results, study) for study in done[start:start + 50_000]})
    ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--pg", default="", help="build the ledger in this PostgreSQL database (tables dropped)")
    parser.add_argument("--files", action="store_true", help="also write every done study's metadata and labels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--findings-only", action="store_true",
                        help="build nothing: record the done studies' findings digests of an earlier build with --files")
    args = parser.parse_args()

    from batchseg.config import Config, load_config, write_config

    if args.findings_only:
        t0 = time.perf_counter()
        config = load_config(args.dir.resolve() / "project")
        from batchseg.ledger import Ledger

        ledger = Ledger(config.db_url)
        done = [row["study_id"] for row in ledger.report_rows() if row["state"] == "done"]
        ledger.close()
        record_findings(config.db_url, config.out_dir, done)
        print(f"findings: {len(done)} done studies' digests ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        return

    rng = random.Random(args.seed)
    root = args.dir.resolve()
    data, project = root / "data", root / "project"
    t0 = time.perf_counter()
    studies = write_dataset(data, args.studies, rng)
    print(f"dataset: {len(studies)} studies in {data} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    study_rows, history, done = plan(studies, data, rng, time.time())
    project.mkdir(parents=True, exist_ok=True)
    ledger_file = project / "ledger.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger_file}{suffix}").unlink(missing_ok=True)
    config = Config(project_dir=project, dataset=str(data), segmenter="noop", db=args.pg)
    write_config(config)
    if args.pg:
        write_pg(args.pg, study_rows, history)
    else:
        write_sqlite(ledger_file, study_rows, history)
    states: dict[str, int] = {}
    for row in study_rows:
        states[row[6]] = states.get(row[6], 0) + 1
    print(f"ledger: {len(study_rows)} studies {dict(sorted(states.items()))}, {len(history)} history rows "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    if args.files:
        write_files(config.out_dir, done)
        record_findings(config.db_url, config.out_dir, [study for study, _ in done])
        print(f"results: {len(done)} done studies' metadata and labels, their digests in the ledger "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
