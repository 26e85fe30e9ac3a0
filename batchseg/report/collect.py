"""The review report's read of the ledger (`batchseg report`): every study once, in queue order, into a `Report`
and, when asked, the CSV.

Each done study's findings come from the ledger's digest of its files while it matches them (outputs.py),
else from the files themselves. A large ledger is read in consecutive runs of its queue (`report_cuts`),
one process each: this one and, beside it, as many as make one per CPU this process may use, at most one per
PART_STUDIES studies. Each writes its run's CSV rows to a part file beside the CSV and builds its run's
`ReportBuilder` (none for the CSV alone); the parts are joined in queue order into the CSV (written atomically)
and the builders merged in the same order, so the result is the one a single pass gives. Each run reads in a
transaction of its own (as the summary does): on a ledger that changes while the report runs, each study is as
its run saw it. `ledger` is the project's `Ledger` or, for a current local SQLite ledger, its `PlainReader`;
each process opens the ledger the same way.
"""
from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from ..files import open_atomic
from ..ledger_sqlite import plain_path
from ..ledger_summary import PlainReader
from ..outputs import files_from_digest, read_study_files
from ..placement import usable_cpus
from .csv_rows import csv_header, render_csv
from .model import ALL_ROWS, Report, ReportBuilder, StudyEntry, study_entry

# A process of its own for fewer studies than this costs more in start-up than it saves.
PART_STUDIES = 10_000


def study_entries(out_dir: Path, ledger: Any, *, first_seq: int | None = None,
                  end_seq: int | None = None) -> Iterator[StudyEntry]:
    """Every study's entry in ledger order (first_seq <= seq < end_seq where given), streamed from the ledger."""
    for row in ledger.report_rows(first_seq=first_seq, end_seq=end_seq):
        files = None
        if row["state"] == "done":
            study_id = row["study_id"]
            files = files_from_digest(out_dir, study_id, row["findings"]) or read_study_files(out_dir, study_id)
        yield study_entry(row, files)


def default_processes(studies: int) -> int:
    return max(1, min(usable_cpus(), studies // PART_STUDIES))


def collect_report(config: Any, ledger: Any, *, now: float | None = None,
                   slurm_jobs: Iterable[dict[str, Any]] = (), all_rows: int = ALL_ROWS, keep_all: bool = False,
                   csv_path: Path | None = None, processes: int | None = None, page: bool = True) -> Report | None:
    """The report (and the CSV at `csv_path`, one row per study) from one read of every study.

    `ledger`: the project's `Ledger`, or its `PlainReader` (a SQLite ledger read without SQLAlchemy).
    `processes`: how many processes read the ledger (None: default_processes). `keep_all` keeps every entry
    in `Report.studies`; `page` False builds no report at all (the CSV alone: None). The ledger's own connection
    reads the summary, and the studies too when one process reads them; other processes open the project's
    ledger themselves, the same way.
    """
    from .. import __version__

    summary = ledger.summary()
    parts = processes if processes is not None else default_processes(int(summary["total"]))
    cuts = ledger.report_cuts(parts) if parts > 1 else []
    runs = list(zip([None, *cuts], [*cuts, None]))
    new_builder = partial(ReportBuilder, all_rows, keep_all=keep_all) if page else None
    with _csv_in_parts(csv_path, len(runs)) as part_paths:
        builder = _read_runs(config, ledger, runs, part_paths, new_builder)
    if builder is None:
        return None
    return builder.build(summary, project=str(config.project_dir), results=str(config.out_dir),
                         ledger_url=shown_url(config), version=__version__, now=now, slurm_jobs=slurm_jobs)


def shown_url(config: Any) -> str:
    """The ledger's URL as the report shows it: without its password. The default ledger's file and a plain
    `sqlite:///PATH` URL have none (no SQLAlchemy is imported to hide one)."""
    if config.ledger_file is not None:
        return f"sqlite:///{config.ledger_file}"
    if plain_path(config.db) is not None:
        return config.db
    from sqlalchemy.engine import make_url

    try:
        return make_url(config.db).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an odd URL still gets a report
        return "(unparsable URL)"


def _collect_run(config: Any, ledger: Any, run: tuple[int | None, int | None], part_path: Path | None,
                 new_builder: Callable[[], ReportBuilder] | None, *, plain: bool = False) -> ReportBuilder | None:
    """One run of the queue: its CSV rows into `part_path` (when given) and its builder (None: none made).
    `ledger` None: this process opens the project's ledger itself (a process must never use a connection it
    inherited), with sqlite3 alone where `plain` and the ledger lets it (PlainReader.open), else as the Ledger."""
    own = ledger is None
    if own:
        ledger = PlainReader.for_config(config) if plain else None
        if ledger is None:
            from ..ledger import Ledger

            ledger = Ledger.for_config(config)
    try:
        builder = new_builder() if new_builder is not None else None
        entries = study_entries(Path(config.out_dir), ledger, first_seq=run[0], end_seq=run[1])
        if builder is not None:
            entries = builder.passing(entries)
        if part_path is not None:
            with open(part_path, "w", encoding="utf-8", newline="") as part:
                for chunk in render_csv(entries):
                    part.write(chunk)
        for _ in entries:
            pass
    finally:
        if own:
            ledger.close()
    return builder


def _read_runs(config: Any, ledger: Any, runs: list[tuple[int | None, int | None]],
               part_paths: list[Path | None], new_builder: Callable[[], ReportBuilder] | None
               ) -> ReportBuilder | None:
    """The first run in this process, on `ledger`; each later run in a process of its own. Their builders
    merged in queue order."""
    if len(runs) == 1:
        return _collect_run(config, ledger, runs[0], part_paths[0], new_builder)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: the processes start with batchseg imported (spawn would import it again in each). They are made
    # before this process reads the studies, and each opens its own connection to the ledger.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(len(runs) - 1, mp_context=multiprocessing.get_context(method)) as pool:
        plain = isinstance(ledger, PlainReader)
        later = [pool.submit(_collect_run, config, None, run, path, new_builder, plain=plain)
                 for run, path in zip(runs[1:], part_paths[1:])]
        builder = _collect_run(config, ledger, runs[0], part_paths[0], new_builder)
        for future in later:
            more = future.result()
            if builder is not None:
                builder.merge(more)
    return builder


@contextmanager
def _csv_in_parts(path: Path | None, parts: int) -> Iterator[list[Path | None]]:
    """Part files beside `path`, one per run; when the block ends without an error, the header and the parts in
    order become the file at `path` (atomically: open_atomic). The part files are gone either way."""
    if path is None:
        yield [None] * parts
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    part_paths = [path.parent / f".{path.name}.{tag}.part{i}" for i in range(parts)]
    try:
        yield list(part_paths)
        with open_atomic(path, "wb") as handle:
            handle.write(csv_header().encode())
            for part_path in part_paths:
                with open(part_path, "rb") as part:
                    shutil.copyfileobj(part, handle, 1 << 20)
    finally:
        for part_path in part_paths:
            part_path.unlink(missing_ok=True)
