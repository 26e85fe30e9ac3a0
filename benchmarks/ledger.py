"""Claim+complete cycles per second of the ledger, with several processes at once.

    python benchmarks/ledger.py [--studies 4000] [--procs 1,4,8] [--pg URL]

Prints one line per (backend, processes): cycles/s and whether any study was claimed twice.
SQLite runs in WAL mode (local disk) and in the rollback-journal mode used on network filesystems.
"""
from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path
from unittest import mock

from batchseg import ledger as ledger_module
from batchseg.ledger import Ledger, StudyRow, WorkerInfo


def _worker(url: str, network: bool, start: "multiprocessing.synchronize.Event",
            out: "multiprocessing.Queue[list[str]]", pid: int) -> None:
    with mock.patch.object(ledger_module, "filesystem_type", lambda _p: "nfs" if network else "ext4"):
        import warnings

        warnings.simplefilter("ignore")
        ledger = Ledger(url)
    start.wait()
    claimed = []
    while (claim := ledger.claim(WorkerInfo("bench", pid), 600)) is not None:
        claimed.append(claim.study_id)
        ledger.complete(claim, {}, {})
    out.put(claimed)
    ledger.close()


def run(url: str, studies: int, procs: int, network: bool = False) -> tuple[float, int]:
    with mock.patch.object(ledger_module, "filesystem_type", lambda _p: "nfs" if network else "ext4"):
        import warnings

        warnings.simplefilter("ignore")
        ledger = Ledger(url)
    ledger.add_studies(StudyRow(str(i)) for i in range(studies))
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(url, network, start, out, p)) for p in range(procs)]
    for w in workers:
        w.start()
    time.sleep(1.0)  # let every process import and connect before the clock starts
    t0 = time.perf_counter()
    start.set()
    claimed = [sid for _ in workers for sid in out.get()]
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.join()
    ledger.close()
    return len(claimed) / elapsed, len(claimed) - len(set(claimed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=4000)
    parser.add_argument("--procs", default="1,4,8")
    parser.add_argument("--pg", default="", help="PostgreSQL URL (its tables are dropped and recreated)")
    args = parser.parse_args()
    for procs in (int(p) for p in args.procs.split(",")):
        for label, network in (("sqlite WAL+NORMAL (local disk)", False), ("sqlite DELETE+FULL (network mode)", True)):
            with tempfile.TemporaryDirectory() as tmp:
                rate, doubles = run(f"sqlite:///{Path(tmp) / 'l.sqlite'}", args.studies, procs, network)
            print(f"{label:36s} procs={procs:2d}  {rate:8.0f} cycles/s  double claims={doubles}")
        if args.pg:
            from sqlalchemy import create_engine

            engine = create_engine(args.pg)
            ledger_module.metadata.drop_all(engine)
            engine.dispose()
            rate, doubles = run(args.pg, args.studies, procs)
            print(f"{'postgresql SKIP LOCKED':36s} procs={procs:2d}  {rate:8.0f} cycles/s  double claims={doubles}")


if __name__ == "__main__":
    main()
