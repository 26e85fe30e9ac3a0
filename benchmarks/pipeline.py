"""Seconds per study, by stage, and throughput of `batchseg run` on a synthetic dataset.

    python benchmarks/pipeline.py [--studies 16] [--matrix 256] [--workers 2]
                                  [--segmenter reference|noop|spineps] [--models DIR]

Synthesizes a dataset, makes a project, runs it with the real command line, then prints the
wall time, studies per hour, the median of every stage from the ledger, and the peak memory
of any worker process.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchseg.ledger import Ledger
from batchseg.synth import synth_dataset


def batchseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "batchseg", *args], check=False, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--segmenter", default="reference", choices=["reference", "noop", "spineps"])
    parser.add_argument("--models", default="", help="SPINEPS weights folder (with --segmenter spineps)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, project = Path(tmp) / "data", Path(tmp) / "p"
        synth_dataset(data, args.studies, seed=7, matrix=args.matrix, broken=False)
        init = ["init", "--project", str(project), "--dataset", str(data), "--segmenter", args.segmenter]
        batchseg(*init, *(["--models", args.models] if args.models else []))
        start = time.perf_counter()
        batchseg("run", "--project", str(project), "--workers", str(args.workers))
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
        done = list(ledger.studies("done"))
        stages: dict[str, list[float]] = {}
        for study in done:
            for stage, seconds in (study["timings"] or {}).items():
                stages.setdefault(stage, []).append(seconds)
        ledger.close()
    print(f"{len(done)}/{args.studies} studies done, matrix {args.matrix}, {args.workers} workers, "
          f"segmenter {args.segmenter}")
    print(f"wall {wall:.1f} s  ->  {len(done) / wall * 3600:.0f} studies/h; peak worker RSS {peak_mb:.0f} MB")
    for stage, values in stages.items():
        print(f"  {stage:24s} median {statistics.median(values):8.3f} s   max {max(values):8.3f} s")


if __name__ == "__main__":
    main()
