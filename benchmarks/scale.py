"""batchseg's commands on a large project, each beside a plain script that does the same work with the same SQL.

    python benchmarks/scale_build.py /tmp/s1m --studies 1000000 --files     # once: the project to measure
    python benchmarks/scale.py run /tmp/s1m [--repeat 3] [--only status,claims,init,report] [--pg URL]

Every command runs as its own process under `/usr/bin/time -v`; the table gives the fastest of --repeat runs
(wall seconds) and the largest peak memory (maximum resident set size) of those runs, batchseg's and the plain
script's from the same run, alternating, so both see the same machine. Where a command runs several processes
(the report), /usr/bin/time gives its largest process; the table adds the peak of all of them together (sampled
every 50 ms from /proc; pages they share counted in each). Steps:

  status       `batchseg status` (and `--json`) / plain_sql.py status; plus, in-process, Ledger.summary's
               time and the `run` progress line's (the counters only), without Python's start-up and imports
  claims       claim latency over --claims claim+done cycles on a copy of the ledger (its 64 expired leases
               included: the first claim expires them), batchseg's Ledger.claim / plain_sql.py claims
  init         `batchseg init` into a new project / plain_sql.py init into an empty ledger; then again on the
               full ledger, where nothing is new
  report       `batchseg report` (the HTML), `batchseg report --csv`, both with the default processes and with
               `--processes 1` / plain_sql.py report-csv
PostgreSQL (--pg URL, a database scale_build.py --pg filled): status and claims against it as well.

Internal helpers (what `run` calls): `scale.py claims URL --n N`, `scale.py summary URL`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
BATCHSEG = [PYTHON, "-m", "batchseg"]
PLAIN = [PYTHON, str(HERE / "plain_sql.py")]


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of `pid` and every process below it, summed (kB; shared pages counted in each)."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            total = next((int(line.split()[1]) for line in handle if line.startswith("VmRSS:")), 0)
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                total += sum(_tree_rss_kb(int(child)) for child in handle.read().split())
    except OSError:   # it ended meanwhile
        pass
    return total


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, int, str, int]:
    """(wall seconds, peak RSS in MB of the largest process, stdout, peak RSS in MB of all its processes
    together) of one run under /usr/bin/time -v; the sum is sampled every 50 ms, shared pages in each."""
    proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            time.sleep(0.05)

    import threading

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout[-2000:]}\n{stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) / 1024
    # /usr/bin/time's own few MB are in the sampled sum: it is the tree's root.
    return seconds, round(rss), stdout, round(peak[0] / 1024)


def best(cmds: dict[str, list[str]], repeat: int, before: dict[str, object] | None = None) -> dict[str, tuple]:
    """Fastest wall, largest RSS of one process and largest RSS of all processes of each command over `repeat`
    alternating runs."""
    runs: dict[str, list[tuple[float, int, str, int]]] = {k: [] for k in cmds}
    for _ in range(repeat):
        for name, cmd in cmds.items():
            if before and name in before:
                before[name]()   # type: ignore[operator]
            runs[name].append(timed(cmd))
    return {k: (min(r[0] for r in v), max(r[1] for r in v), v[-1][2], max(r[3] for r in v)) for k, v in runs.items()}


class Table:
    def __init__(self) -> None:
        self.rows: list[str] = ["| what | batchseg | plain script | ratio |", "|---|---|---|---|"]

    def add(self, what: str, ours: tuple, plain: tuple | None) -> None:
        mine = f"{ours[0]:.2f} s, {ours[1]} MB"
        if len(ours) > 3 and ours[3] > ours[1] + 16:   # more than one process: their memory together too
            mine += f" ({ours[3]} MB all processes)"
        if plain is None:
            self.rows.append(f"| {what} | {mine} | | |")
        else:
            self.rows.append(f"| {what} | {mine} | {plain[0]:.2f} s, {plain[1]} MB | {ours[0] / plain[0]:.2f}x |")
        print(self.rows[-1], flush=True)


def copy_sqlite(src: Path, dst: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    # The copy's writeback is not the claims' cost: a claim's commit (fsync) would wait behind gigabytes of it.
    os.sync()


def run(args: argparse.Namespace) -> None:
    root: Path = args.dir.resolve()
    project, data = root / "project", root / "data"
    url = f"sqlite:///{project / 'ledger.sqlite'}"
    only = set(args.only.split(",")) if args.only else {"status", "claims", "init", "report"}
    scratch = Path(tempfile.mkdtemp(prefix="batchseg-scale-", dir=args.scratch))
    table = Table()
    print(f"# {root.name}: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start", flush=True)
    print("\n".join(table.rows), flush=True)
    try:
        if "status" in only:
            # The first open of a ledger made before the counters adds them: not what status costs.
            timed([*BATCHSEG, "status", "--project", str(project)])
            r = best({"ours": [*BATCHSEG, "status", "--project", str(project)],
                      "plain": [*PLAIN, "status", url]}, args.repeat)
            table.add("status", r["ours"], r["plain"])
            # What any batchseg command costs before it opens the ledger (interpreter, click, SQLAlchemy).
            r = best({"ours": [*BATCHSEG, "--help"]}, args.repeat)
            table.add("batchseg --help (start-up alone, no ledger)", r["ours"], None)
            r = best({"ours": [*BATCHSEG, "status", "--project", str(project), "--json"]}, args.repeat)
            table.add("status --json (every failed study listed)", r["ours"], None)
            r = best({"ours": [PYTHON, __file__, "summary", url]}, 1)
            summary = json.loads(r["ours"][2])
            table.rows.append(f"| in-process: Ledger.summary (status's reads) | {summary['summary_ms']:.1f} ms | | |")
            table.rows.append(f"| in-process: `run`'s progress line | {summary['progress_ms']:.2f} ms | | |")
            print("\n".join(table.rows[-2:]), flush=True)
            if args.pg:
                r = best({"ours": [*BATCHSEG, "status", "--project", str(project), "--db", args.pg],
                          "plain": [*PLAIN, "status", args.pg]}, args.repeat)
                table.add("status (PostgreSQL)", r["ours"], r["plain"])
        if "claims" in only:
            ledger_file = project / "ledger.sqlite"
            ours_db, plain_db = scratch / "ours.sqlite", scratch / "plain.sqlite"
            found: dict[str, list[dict]] = {"ours": [], "plain": []}
            for _ in range(args.repeat):   # each run on a fresh copy; the median of the runs' figures
                copy_sqlite(ledger_file, ours_db)
                found["ours"].append(json.loads(timed([PYTHON, __file__, "claims", f"sqlite:///{ours_db}", "--n",
                                                       str(args.claims)])[2].strip().splitlines()[-1]))
                copy_sqlite(ledger_file, plain_db)
                found["plain"].append(json.loads(timed([*PLAIN, "claims", f"sqlite:///{plain_db}", "--n",
                                                        str(args.claims)])[2].strip().splitlines()[-1]))
            for who, runs in found.items():
                lat = {k: statistics.median(run[k] for run in runs) for k in ("claims", "p50_ms", "p99_ms",
                                                                              "max_ms", "first_ms")}
                table.rows.append(f"| claim latency, {'batchseg' if who == 'ours' else 'plain sqlite3'} "
                                  f"({lat['claims']:.0f} claims, median of {len(runs)} runs) | p50 "
                                  f"{lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, max {lat['max_ms']:.1f} ms "
                                  f"(the first claim, expiring the leases: {lat['first_ms']:.1f} ms) | | |")
                print(table.rows[-1], flush=True)
            ours_db.unlink(missing_ok=True)
            plain_db.unlink(missing_ok=True)
            if args.pg:
                for who, cmd in (("batchseg", [PYTHON, __file__, "claims", args.pg, "--n", str(args.claims)]),
                                 ("plain psycopg", [*PLAIN, "claims", args.pg, "--n", str(args.claims)])):
                    lat = json.loads(timed(cmd)[2].strip().splitlines()[-1])
                    table.rows.append(f"| claim latency, {who}, PostgreSQL ({lat['claims']} claims) | p50 "
                                      f"{lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms | | |")
                    print(table.rows[-1], flush=True)
        if "init" in only:
            new = scratch / "new"
            empty = scratch / "empty.sqlite"

            def fresh_project() -> None:
                shutil.rmtree(new, ignore_errors=True)

            def fresh_ledger() -> None:
                from batchseg.ledger import Ledger

                for suffix in ("", "-wal", "-shm"):
                    Path(f"{empty}{suffix}").unlink(missing_ok=True)
                Ledger(f"sqlite:///{empty}").close()

            r = best({"ours": [*BATCHSEG, "init", "--project", str(new), "--dataset", str(data),
                               "--segmenter", "noop"],
                      "plain": [*PLAIN, "init", str(data), f"sqlite:///{empty}"]}, args.repeat_slow,
                     before={"ours": fresh_project, "plain": fresh_ledger})
            table.add("init, new project", r["ours"], r["plain"])
            r = best({"ours": [*BATCHSEG, "init", "--project", str(new), "--dataset", str(data),
                               "--segmenter", "noop"],
                      "plain": [*PLAIN, "init", str(data), f"sqlite:///{empty}"]}, args.repeat_slow)
            table.add("init again, nothing new", r["ours"], r["plain"])
            shutil.rmtree(new, ignore_errors=True)
            empty.unlink(missing_ok=True)
        if "report" in only:
            html, out_csv, plain_csv = scratch / "report.html", scratch / "report.csv", scratch / "plain.csv"
            report = [*BATCHSEG, "report", "--project", str(project)]
            r = best({"ours": [*report, "--html", str(html)],
                      "csv": [*report, "--csv", str(out_csv)],
                      "one": [*report, "--html", str(html), "--processes", "1"],
                      "csv-one": [*report, "--csv", str(out_csv), "--processes", "1"],
                      "plain": [*PLAIN, "report-csv", url, str(project / "results"), str(plain_csv)]},
                     args.repeat_slow)
            cpus = len(os.sched_getaffinity(0))
            table.add(f"report (HTML; default processes, {cpus} CPUs)", r["ours"], r["plain"])
            table.add(f"report --csv (default processes, {cpus} CPUs)", r["csv"], r["plain"])
            table.add("report (HTML), --processes 1", r["one"], r["plain"])
            table.add("report --csv, --processes 1", r["csv-one"], r["plain"])
            sizes = {p.name: p.stat().st_size / 1e6 for p in (html, out_csv) if p.exists()}
            table.rows.append("| report sizes | " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items()) + " | | |")
            print(table.rows[-1], flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"# load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end", flush=True)


def claims(url: str, n: int) -> None:
    """batchseg's side of the claim latency: Ledger.claim, then Ledger.complete, n times."""
    sys.path.insert(0, str(HERE))
    from plain_sql import print_latency

    from batchseg.ledger import Ledger, WorkerInfo

    ledger = Ledger(url)
    who = WorkerInfo("bench", 1)
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        claim = ledger.claim(who, 600)
        latencies.append(time.perf_counter() - t0)
        if claim is None:
            break
        ledger.complete(claim, {}, {})
    ledger.close()
    print_latency("batchseg", latencies)


def summary(url: str) -> None:
    """Ledger.summary as status calls it, and the progress line as `run` calls it each second (ms, in-process)."""
    from batchseg.ledger import Ledger
    from batchseg.report.status_text import progress_line

    ledger = Ledger(url)
    ledger.summary(studies_per_group=4)   # warm: the first query of a process reads the schema
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        ledger.summary(studies_per_group=4)
        times.append(time.perf_counter() - t0)
    ticks = []
    for _ in range(20):
        t0 = time.perf_counter()
        progress_line(ledger.summary(studies_per_group=0))
        ticks.append(time.perf_counter() - t0)
    ledger.close()
    print(json.dumps({"summary_ms": statistics.median(times) * 1e3, "progress_ms": statistics.median(ticks) * 1e3}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("--repeat", type=int, default=3, help="runs of the quick commands (status)")
    r.add_argument("--repeat-slow", type=int, default=1, help="runs of init and report")
    r.add_argument("--claims", type=int, default=300)
    r.add_argument("--only", default="")
    r.add_argument("--pg", default="")
    r.add_argument("--scratch", default=None, help="folder for copies and new projects (default: the temp dir)")
    c = sub.add_parser("claims")
    c.add_argument("url")
    c.add_argument("--n", type=int, default=300)
    s = sub.add_parser("summary")
    s.add_argument("url")
    args = parser.parse_args()
    if args.what == "run":
        run(args)
    elif args.what == "claims":
        claims(args.url, args.n)
    else:
        summary(args.url)


if __name__ == "__main__":
    main()
