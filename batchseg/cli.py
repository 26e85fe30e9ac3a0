"""The `batchseg` command: parse, call the library, print. No logic of its own."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Container, Iterable, Iterator

import click

from . import __version__
from .config import (CONFIG_NAME, DB_ENV, LAYOUTS, PROJECT_ENV, Config, ConfigError, find_project, load_config,
                     mask_passwords, url_password, write_config)
from .errors import StudyError, one_line, printable
from .files import write_json

if TYPE_CHECKING:
    from .ledger import StudyRow


LAYOUT_CHOICES = list(LAYOUTS)
SHOWN_REASONS = 20      # init prints the series choice of this many studies (every one stays in the ledger)


class Context:
    """What every command needs: the project folder and an optional database URL override."""

    def __init__(self, project: str | None, db: str | None) -> None:
        self.project_option = project
        self.db_option = db

    def config(self) -> Config:
        folder = Path(self.project_option).resolve() if self.project_option else find_project()
        config = load_config(folder)
        if self.db_option:
            config.db = self.db_option
        return config

    def ledger(self, config: Config) -> Any:
        from .ledger import Ledger

        return Ledger.for_config(config)


def project_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--project and --db, on every command."""

    @click.option("--db", "db", metavar="URL", default=None, envvar=DB_ENV,
                  help="SQLAlchemy database URL of the ledger (default: the project's, else <project>/ledger.sqlite; "
                       f"also ${DB_ENV}). Keep its password in ~/.pgpass.")
    @click.option("--project", "project", metavar="DIR", default=None, envvar=PROJECT_ENV,
                  help=f"Project folder (default: the nearest folder upwards holding {CONFIG_NAME}; "
                       f"also ${PROJECT_ENV}).")
    @functools.wraps(command)
    def wrapper(*args: Any, project: str | None, db: str | None, **kwargs: Any) -> Any:
        return command(Context(project, db), *args, **kwargs)

    return wrapper


STATUS_STUDIES_SHOWN = 3   # studies named per error class in the `status` table


def fail(message: str, code: int = 2) -> None:
    click.echo(f"batchseg: {mask_passwords(message)}", err=True)
    sys.exit(code)


def shown_url(url: str) -> str:
    """A database URL as it may be printed: its password masked."""
    return mask_passwords(url)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


class _LiveLine:
    """One status line rewritten in place on a terminal; elsewhere a line every 10 s (and the last one)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last = ""
        self.printed_at = 0.0
        self.open = False

    def show(self, line: str) -> None:
        self.last = line
        if self.tty:
            click.echo("\r\033[K" + line, nl=False)
            self.open = True
        elif time.time() - self.printed_at >= 10:
            click.echo(line)
            self.printed_at = time.time()
            self.last = ""

    def note(self, line: str) -> None:
        """A line that stays: it replaces the live line, and the next live line starts below it."""
        if self.open:
            click.echo("\r\033[K", nl=False)
            self.open = False
        click.echo(line)
        self.last = ""

    def end(self) -> None:
        if self.open:
            click.echo()
            self.open = False
        elif self.last:
            click.echo(self.last)
        self.last = ""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchseg")
def cli() -> None:
    """Run one segmentation model over thousands of spine MRI studies, tracked in a ledger.

    Start with `batchseg demo DIR`, or `batchseg init --dataset RSNA_DIR` then `batchseg run`
    (this machine) or `batchseg submit --array` (Slurm).
    """


# -- project set-up -----------------------------------------------------------------------------

def _without_gc(command: Callable[..., None]) -> Callable[..., None]:
    """Python's cycle collector off while `command` runs: init and report make millions of objects (a million
    studies, three million CSV rows) that hold no cycles, and the collector, walking them again and again as they
    pile up, was a third of init's time."""
    import gc

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        was = gc.isenabled()
        gc.disable()
        try:
            command(*args, **kwargs)
        finally:
            if was:
                gc.enable()
    return wrapper


@cli.command()
@project_options
@click.option("--dataset", required=True, type=click.Path(path_type=Path),
              help="The dataset: an RSNA 2024 folder, a BIDS folder, a manifest CSV or a tree of DICOM files.")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default=None,
              help="How to read --dataset (default: the project's, else detected; the choice is printed).")
@click.option("--studies", "studies_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Study list: .npy (int array, like valid_id.npy), .csv (study_id column) or .txt.")
@click.option("--limit", type=click.IntRange(min=1), help="Take only the first N studies of the list.")
@click.option("--out", default=None, help="Output folder (default: <project>/results).")
@click.option("--segmenter", type=click.Choice(["spineps", "reference", "noop"]), default=None,
              help="spineps (the real model), reference (synthetic phantoms only) or noop (plumbing check).")
@click.option("--split", type=click.Choice(["train", "test"]), default=None, help="Which half of an RSNA dataset.")
@click.option("--models", "models_dir", default=None, help="SPINEPS weights folder (SPINEPS_SEGMENTOR_MODELS).")
@click.option("--link/--copy", "link", default=None,
              help="NIfTI inputs (.nii.gz) reach results/nifti/ as a symlink instead of a copy (default: copy).")
@click.option("--recheck-skipped", is_flag=True,
              help="Skipped studies whose series the dataset now has go back to pending.")
@_without_gc
def init(ctx: Context, dataset: Path, layout: str | None, studies_file: Path | None, limit: int | None,
         out: str | None, segmenter: str | None, split: str | None, models_dir: str | None, link: bool | None,
         recheck_skipped: bool) -> None:
    """Fill the ledger from the dataset (one row per study) and write batchseg.toml.

    Running it again adds new studies and keeps every existing state and history
    (with --recheck-skipped, skipped studies the dataset can now serve become pending).
    """
    from .dataset import DatasetError, load_study_list
    from .inventory import build, choose_layout

    folder = Path(ctx.project_option or os.getcwd()).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        config = load_config(folder) if (folder / CONFIG_NAME).exists() else Config(project_dir=folder)
    except ConfigError as exc:
        fail(str(exc))
    saved_dataset = config.dataset_dir if (folder / CONFIG_NAME).exists() else None
    # Paths typed on the command line mean what they mean in the shell they were typed in.
    typed_paths = {"dataset": dataset, "studies_file": studies_file, "out": out, "models_dir": models_dir}
    for key, value in typed_paths.items():
        if value is not None:
            setattr(config, key, str(Path(value).resolve()))
    for key, value in (("segmenter", segmenter), ("split", split), ("db", ctx.db_option)):
        if value is not None:
            setattr(config, key, value)
    if link is not None:
        config.nifti_input = "link" if link else "copy"
    live = _LiveLine()
    ledger = None
    known: Container[str] = frozenset()
    if (folder / CONFIG_NAME).exists() and not recheck_skipped:
        # Again: a study the ledger has keeps its row whatever the dataset says, so it is not looked at again
        # (a million of them cost more than the CSV). --recheck-skipped looks at every study. Staged as below
        # (a missing ledger file is filled under a temporary name; a killed init's temporary file goes).
        ledger = _open_ledger(config, stage_new=True)
        known = ledger.study_ids()
    try:
        chosen = choose_layout(layout, dataset.resolve(), split=config.split,
                               saved=config.layout if saved_dataset == dataset.resolve() else None)
        config.layout = chosen.layout
        click.echo(f"layout {chosen.layout} ({chosen.why})")
        study_list = load_study_list(config.path(config.studies_file)) if config.studies_file else None
        inventory = build(config.layout, dataset, folder, split=config.split, study_list=study_list, limit=limit,
                          progress=lambda n, total: live.show(f"DICOM tree inventory: {n}/{total} files"),
                          known=known)
    except DatasetError as exc:
        live.end()
        fail(f"{exc.error_class}: {exc.message}")
    live.end()
    # The ledger opens before the config is written: a bad --db URL must not be saved. A new SQLite ledger file is
    # filled under a temporary name and appears whole when filled (Ledger's stage_new).
    if ledger is None:
        ledger = _open_ledger(config, stage_new=True)
    with ledger.filling():
        write_config(config)
        if url_password(config.db):
            click.echo(f"warning: the database URL holds a password; {CONFIG_NAME} is saved readable by you only "
                       "(mode 0600), but keep the password in ~/.pgpass instead (libpq reads it on every node) "
                       "and drop it from the URL", err=True)
        config.logs_dir.mkdir(exist_ok=True)
        told = _Told(every_choice=inventory.layout == "rsna")
        # Made once (StudyRows makes them on each pass): --recheck-skipped reads them twice.
        rows = list(inventory.rows) if recheck_skipped else inventory.rows
        added = ledger.add_studies(told.watch(rows))
    for study in ledger.requeue_skipped(rows) if recheck_skipped else []:
        click.echo(f"  study {study}: was skipped, its series is there now: pending")
    for warning in inventory.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"project {config.project_dir}")
    duplicates = f", {inventory.duplicates} duplicate row(s) read once" if inventory.duplicates else ""
    read = "" if inventory.source == dataset.resolve() else f" ({inventory.source.name})"
    listed = told.pending + len(told.skipped) + inventory.known
    if inventory.known:
        click.echo(f"dataset {dataset.resolve()}{read}: {listed} studies listed, {inventory.known} already in the "
                   f"ledger (not looked at again); new: {told.pending} with {inventory.wanted}, {len(told.skipped)} "
                   f"skipped{duplicates}")
    else:
        click.echo(f"dataset {dataset.resolve()}{read}: {listed} studies listed, "
                   f"{told.pending} with {inventory.wanted}, {len(told.skipped)} skipped{duplicates}")
    for note in inventory.notes:
        click.echo(f"  {note}")
    for row in told.skipped:
        click.echo(f"  skipped {row.study_id}: {row.skip_class}: {row.skip_message}")
    for row in told.shown:
        click.echo(f"  study {row.study_id}: {row.selection_reason}")
    if not told.every_choice and told.pending > SHOWN_REASONS:
        click.echo(f"  ... and {told.pending - SHOWN_REASONS} more (`batchseg status --study ID` shows each reason)")
    click.echo(f"ledger {shown_url(config.db_url)}: {len(added.added)} added, "
               f"{inventory.known + len(added.existing)} already there (kept as they were)")
    click.echo(f"segmenter {config.segmenter}; outputs go to {config.out_dir}")
    ledger.close()


@dataclasses.dataclass
class _Told:
    """What init tells of the rows it adds, gathered as they pass into the ledger (a million are never held):
    the pending ones counted, every skipped one, and the series choices it prints (RSNA: every choice of one
    among several series; other layouts: the first SHOWN_REASONS)."""

    every_choice: bool
    pending: int = 0
    skipped: list[StudyRow] = dataclasses.field(default_factory=list)
    shown: list[StudyRow] = dataclasses.field(default_factory=list)

    def watch(self, rows: Iterable[StudyRow]) -> Iterator[StudyRow]:
        skipped, shown, every_choice = self.skipped.append, self.shown.append, self.every_choice
        pending = self.pending   # a local in the loop (a million rows), kept when it ends
        try:
            for row in rows:
                if row.skip_class:
                    skipped(row)
                else:
                    reason = row.selection_reason
                    if reason and not reason.startswith("the only") if every_choice else pending < SHOWN_REASONS:
                        shown(row)
                    pending += 1
                yield row
        finally:
            self.pending = pending


def _open_ledger(config: Config, *, stage_new: bool = False) -> Any:
    """The project's ledger, its warnings (a network filesystem) shown as one line each."""
    from .ledger import Ledger

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ledger = Ledger.for_config(config, stage_new=stage_new)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    return ledger


# -- running ------------------------------------------------------------------------------------

def _check_models_or_stop(config: Config) -> None:
    """With the SPINEPS segmenter, stop before any claim when its weights cannot be found."""
    from .worker import preflight

    problem = preflight(config)
    if problem:
        fail(problem)


@cli.command()
@project_options
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: config).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Process at most N studies in this run.")
@click.option("--gpus", default=None, metavar="LIST",
              help="Spread the workers over these GPUs round robin, e.g. 0,1 (each worker's CUDA_VISIBLE_DEVICES).")
def run(ctx: Context, workers: int | None, limit: int | None, gpus: str | None) -> None:
    """Process pending studies with N local worker processes (no Slurm needed).

    The workers share this machine's CPUs evenly (threads per worker for torch, numpy and ITK).
    Exit status 0 only when every study this run handled ended done; 1 when any did not (failed,
    or put back to pending by a concurrent retry-failed), 128+N when signal N interrupted the run.
    """
    from .executors.local import run_local
    from .placement import PlacementError, parse_gpus
    from .report.status_text import progress_line

    config = ctx.config()
    try:
        gpu_list = parse_gpus(gpus)
    except PlacementError as exc:
        fail(str(exc))
    _check_models_or_stop(config)
    ledger = ctx.ledger(config)
    workers = workers or config.workers
    live = _LiveLine()
    click.echo(f"running {workers} worker(s) on {config.project_dir} (segmenter {config.segmenter}); "
               f"logs in {config.logs_dir}")
    if ctx.db_option and url_password(ctx.db_option):
        click.echo("warning: the password of --db does not travel to the workers: they read it from ~/.pgpass "
                   "(or $PGPASSWORD)", err=True)
    # The progress line reads counters, not rows: it costs the same in a ledger of any size.
    result = run_local(config, workers=workers, limit=limit, gpus=gpu_list, ledger=ledger,
                       on_tick=lambda: live.show(progress_line(ledger.summary(studies_per_group=0))),
                       on_event=live.note)
    live.end()
    handled = ledger.states_of_claimed_since(result.started_at)
    unfinished = {sid: state for sid, state in handled.items() if state != "done"}
    states = ledger.states()
    left = states["pending"] + states["running"]
    click.echo(f"outputs in {config.out_dir}")
    bad_workers = result.failed_workers
    if unfinished:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(Counter(unfinished.values()).items()))
        click.echo(f"{len(unfinished)} of {len(handled)} studies this run handled did not end done ({counts}): "
                   "see `batchseg status --failed`", err=True)
    if bad_workers and result.interrupted is None:
        click.echo(f"{len(bad_workers)} worker(s) exited with an error; see {config.logs_dir}", err=True)
    if result.interrupted is not None:
        click.echo(f"interrupted by {signal_name(result.interrupted)}: {left} studies left "
                   f"({states['pending']} pending, {states['running']} running); `batchseg run` again goes on",
                   err=True)
        sys.exit(128 + result.interrupted)
    sys.exit(1 if unfinished or bad_workers else 0)


def signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@cli.command()
@project_options
@click.option("--max-studies", type=click.IntRange(min=1), default=None, help="Stop after N studies.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Start this many worker processes sharing this allocation (a Slurm task's workers_per_task).")
def work(ctx: Context, max_studies: int | None, workers: int) -> None:
    """The worker loop (what `run` and each Slurm array task start): claim until nothing is left.

    With --workers N it starts N worker processes instead, spread over the GPUs in
    CUDA_VISIBLE_DEVICES with the CPUs split between them, passes USR1/TERM/INT on to all,
    replaces one that dies holding a study (as `run` does), and exits 0 only when every worker
    exited 0 or was made good that way.
    """
    import logging

    from .worker import plain_streams, run_worker

    plain_streams()   # the log file gets no colour codes (SPINEPS prints them) and no passwords
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    config = ctx.config()
    deadline_source = None
    if os.environ.get("SLURM_JOB_ID"):
        from .executors.slurm import allocation_deadline, reclaim_after_requeue
        from .ledger import Ledger, WorkerInfo

        log = logging.getLogger("batchseg.work")
        ledger = None
        try:
            ledger = Ledger.for_config(config)
            for study in reclaim_after_requeue(ledger, WorkerInfo.from_environment()):
                log.warning("study %s: held by an earlier run of this requeued task; marked lost", study)
        except Exception as exc:  # noqa: BLE001 - the lease still frees such studies; the task must run
            # (an unreachable ledger included: the worker waits for it within db_retry_seconds)
            log.warning("could not look for studies of an earlier run of this task: %s", one_line(str(exc), 300))
        finally:
            if ledger is not None:
                ledger.close()
        deadline_source = allocation_deadline
    if workers > 1:
        _work_group(config, workers, max_studies)
        return
    stats = run_worker(config, max_studies=max_studies, deadline_source=deadline_source)
    logging.getLogger("batchseg.worker").info(
        "worker stops: %s; %d done, %d failed attempts, %d released", stats.stop_reason or "finished",
        len(stats.done), len(stats.failed), len(stats.released))
    if stats.setup_error:
        sys.exit(3)
    if stats.ledger_error:
        fail(f"worker gives up: {stats.ledger_error}")


def _work_group(config: Config, workers: int, max_studies: int | None) -> None:
    import logging

    from .errors import LedgerUnreachable
    from .executors.local import group_exit_code, run_local
    from .ledger import Ledger
    from .placement import GPU_ENV, PlacementError, parse_gpus
    from .worker import with_retries

    log = logging.getLogger("batchseg.work")
    try:
        gpus = parse_gpus(os.environ.get(GPU_ENV))
    except PlacementError as exc:
        fail(f"{GPU_ENV}: {exc}")
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    stem = f"{job}_{task}" if job and task else None
    try:   # the group marks its dead workers' studies lost: it waits for the ledger as a worker does
        ledger = with_retries(Ledger.for_config, config, window=config.db_retry_seconds)
    except LedgerUnreachable as exc:
        fail(f"worker group gives up: {exc}")
    try:
        result = run_local(config, workers=workers, limit=max_studies, gpus=gpus, log_stem=stem, ledger=ledger,
                           on_event=log.warning,
                           on_started=lambda run: [log.info("%s, pid %d, log %s", slot.describe(), pid, path)
                                                   for slot, pid, path in zip(run.slots, run.pids, run.logs)])
    finally:
        ledger.close()
    # A worker that died holding a study, marked lost or replaced, is made good (as in `run`).
    code = group_exit_code(result.failed_workers)
    log.info("workers ended with exit codes %s; this task exits %d", result.returncodes, code)
    sys.exit(code)


# -- looking at it ------------------------------------------------------------------------------

@cli.command()
@project_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
@click.option("--failed", "show_failed", is_flag=True, help="List every failed and skipped study.")
@click.option("--study", "study_id", default=None, help="One study: its row and full history.")
def status(ctx: Context, as_json: bool, show_failed: bool, study_id: str | None) -> None:
    """Completeness, failures grouped by error class, throughput and ETA (per-study tables: `report`)."""
    from .report.status_text import format_status

    config = ctx.config()
    if study_id:
        _status_of_study(ctx, config, study_id, as_json)
        return
    # The table names three studies per error class (a fourth tells it to write "..."); --failed and --json
    # list them all.
    per_group = None if show_failed or as_json else STATUS_STUDIES_SHOWN + 1
    jobs: list[dict[str, Any]] = []
    summary = _plain_summary(config, per_group)
    if summary is None:   # a ledger the plain reader leaves to the Ledger (Slurm jobs to reconcile among them)
        ledger = ctx.ledger(config)
        jobs = _slurm_jobs(config, ledger)
        summary = ledger.summary(studies_per_group=per_group)
        if jobs:
            summary["slurm_jobs"] = jobs
    if as_json:
        echo_json(summary)
    else:
        click.echo(format_status(summary, show_failed=show_failed, jobs=jobs))


def _status_of_study(ctx: Context, config: Config, study_id: str, as_json: bool) -> None:
    from .report.status_text import format_study

    ledger = ctx.ledger(config)
    study = ledger.study(study_id)
    if study is None:
        fail(f"no study {study_id!r} in the ledger")
    events = ledger.history(study_id)
    lstv = levels = None
    if study["state"] == "done":
        from .outputs import read_study_files

        # The findings as the study's metadata holds them (None when it cannot be read).
        files = read_study_files(Path(config.out_dir), study_id)
        lstv, levels = files.lstv, files.levels
    if as_json:
        echo_json({"study": study, "history": events, "lstv": lstv, "levels": levels})
    else:
        click.echo(format_study(study, events, lstv, levels))


def _plain_summary(config: Config, per_group: int | None) -> dict[str, Any] | None:
    """The summary read with sqlite3 alone (no SQLAlchemy to import: most of status's time), or None when only
    the Ledger may open this ledger (ledger_summary.PlainReader: none yet, older, Slurm to ask, PostgreSQL)."""
    from .ledger_summary import PlainReader

    reader = PlainReader.for_config(config)
    if reader is None:
        return None
    try:
        return reader.summary(studies_per_group=per_group)
    finally:
        reader.close()


def _slurm_jobs(config: Config, ledger: Any) -> list[dict[str, Any]]:
    """Reconcile with Slurm (once per array job) when this project has submitted any."""
    if not ledger.submissions():
        return []
    from .executors.slurm import SlurmError, sync

    try:
        result = sync(config, ledger)
    except (SlurmError, OSError) as exc:
        click.echo(f"warning: could not ask Slurm: {exc}", err=True)
        return []
    for study in result.marked_lost:
        click.echo(f"study {study}: its Slurm task is gone; marked lost", err=True)
    return result.jobs


@cli.command()
@project_options
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the HTML report here (default: <project>/report.html, unless only --csv or --json "
                   "is asked for).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one row per study as CSV (state, errors, LSTV findings, output paths); alone, no HTML.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object (every study).")
@click.option("--embed", is_flag=True, help="Inline QC thumbnails in the HTML (a file that travels alone).")
@click.option("--all-rows", "all_rows", type=click.IntRange(min=0), default=None, metavar="N",
              help="Studies the HTML lists in its long tables (every study, skipped, not assessed, unknown; "
                   "default 3000). Failures, LSTV candidates and caveats are always listed in full; the CSV "
                   "always has every study.")
@click.option("--processes", type=click.IntRange(min=1), default=None, metavar="N",
              help="Processes that read the ledger, each a run of its queue (default: one per CPU this process "
                   "may use, at most one per 10,000 studies).")
@_without_gc
def report(ctx: Context, html_path: Path | None, csv_path: Path | None, as_json: bool, embed: bool,
           all_rows: int | None, processes: int | None) -> None:
    """A review report: progress, failures, skipped studies, LSTV candidates, every study."""
    from .ledger_summary import PlainReader
    from .report.collect import collect_report
    from .report.model import ALL_ROWS, report_json

    config = ctx.config()
    # A current local SQLite ledger without Slurm jobs is read with sqlite3 alone (no SQLAlchemy to import: a
    # large share of a small report's time); any other through the Ledger, which migrates and asks Slurm.
    ledger = PlainReader.for_config(config)
    jobs: list[dict[str, Any]] = []
    if ledger is None:
        ledger = ctx.ledger(config)
        jobs = _slurm_jobs(config, ledger)
    if html_path is None and not as_json and csv_path is None:
        html_path = config.project_dir / "report.html"
    # One read of every study: the CSV is written as the studies stream by.
    try:
        # --csv alone: no page to build (the CSV's rows are all of it).
        built = collect_report(config, ledger, slurm_jobs=jobs, all_rows=ALL_ROWS if all_rows is None else all_rows,
                               keep_all=as_json, csv_path=csv_path, processes=processes,
                               page=html_path is not None or as_json)
    except OSError as exc:
        if csv_path is None:
            raise
        fail(f"cannot write {csv_path}: {exc}", code=1)
    ledger.close()
    if csv_path is not None:
        click.echo(f"wrote {csv_path}", err=as_json)
    if html_path is not None:
        from .report.html_page import write_html   # not for the CSV alone

        try:
            write_html(built, html_path, embed=embed)
        except OSError as exc:
            fail(f"cannot write {html_path}: {exc}", code=1)
        click.echo(f"wrote {html_path}", err=as_json)
    if as_json:
        echo_json(report_json(built))


@cli.command("levels")
@project_options
@click.option("--study", "study_id", default=None, help="Only this study (it must be done).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"studies": [{"study_id", "levels"}, ...], "summary": {...}} for scripts.')
def levels_command(ctx: Context, study_id: str | None, as_json: bool) -> None:
    """Check done studies' disc levels against the dataset's <split>_label_coordinates.csv, again.

    Runs no model: the masks are measured again, the annotated points placed through the series' DICOM
    headers. Rewrites only each study's metadata (its `levels`, and the level check's caveat and
    candidate in `lstv`), atomically. Exit 1 when a study could not be checked.
    """
    from .annotations import read_project_annotations
    from .relevel import recheck_studies
    from .report.status_text import format_levels_run

    config = ctx.config()
    ledger = ctx.ledger(config)
    if study_id is not None:
        row = ledger.study(study_id)
        if row is None:
            fail(f"no study {study_id!r} in the ledger")
        if row["state"] != "done":
            fail(f"study {study_id} is {row['state']}: only done studies have outputs to check")
        rows = [row]
    else:
        rows = list(ledger.studies("done"))
    ledger.close()
    table = read_project_annotations(config.dataset_dir, config.split)
    results, summary = recheck_studies(config.out_dir, rows, table, dataset=config.dataset_dir, split=config.split)
    rewritten = [r.study_id for r in results if r.rewritten]
    if rewritten:
        from .outputs import findings_digest

        # The report's digest of each rewritten metadata file (the old one no longer matches the file).
        ledger = ctx.ledger(config)
        ledger.record_findings({sid: findings_digest(config.out_dir, sid) for sid in rewritten})
        ledger.close()
    if as_json:
        echo_json({"studies": [r.to_json() for r in results], "summary": summary})
    else:
        for line in table.warnings() if table.usable else []:
            click.echo(f"warning: {line}", err=True)
        click.echo(format_levels_run([r.to_json() for r in results], summary))
    sys.exit(1 if summary["errors"] else 0)


@cli.command("retry-failed")
@project_options
@click.option("--error-class", default=None, help="Only failures of this class.")
@click.option("--study", "study_ids", multiple=True, help="Only this study (repeatable).")
@click.option("--submit", is_flag=True, help="Then submit a Slurm array sized to the retried work.")
def retry_failed(ctx: Context, error_class: str | None, study_ids: tuple[str, ...], submit: bool) -> None:
    """Move failed studies back to pending (history kept) and print what was reset."""
    config = ctx.config()
    ledger = ctx.ledger(config)
    ids = ledger.retry_failed(error_class=error_class, study_ids=study_ids or None)
    for sid in ids:
        click.echo(f"reset {sid}")
    click.echo(f"{len(ids)} studies back to pending")
    if submit and ids:
        _submit(config, ledger, tasks=None, max_parallel=None, dry_run=False, sbatch_args=(), overrides={})


# -- Slurm --------------------------------------------------------------------------------------

def _submit(config: Config, ledger: Any, **kwargs: Any) -> None:
    from .executors.slurm import SlurmError, submit_array

    _check_models_or_stop(config)
    try:
        result = submit_array(config, ledger, **kwargs)
    except SlurmError as exc:
        fail(str(exc))
    if not result.tasks:
        click.echo("nothing pending: no array submitted (see `batchseg status`)")
        return
    for line in result.advice:          # on stderr: a dry run's stdout is the job script
        click.echo(f"note: {line}", err=True)
    if result.dry_run:
        for index, script in enumerate(result.scripts):
            if len(result.scripts) > 1:
                click.echo(f"# ---- array {index + 1} of {len(result.scripts)}: --array={result.array_specs[index]}")
            click.echo(script, nl=False)
        return
    for job_id, spec in zip(result.job_ids, result.array_specs):
        click.echo(f"submitted array job {job_id} --array={spec}")
    click.echo(f"{result.tasks} task(s); logs in {config.logs_dir}; follow with `batchseg status`")


@cli.command()
@project_options
@click.option("--array", "array", is_flag=True, required=True, help="Submit a Slurm job array (required).")
@click.option("--tasks", type=click.IntRange(min=1), default=None, help="Array tasks (default: from pending work).")
@click.option("--max-parallel", type=click.IntRange(min=1), default=None, help="At most M tasks at once (%M).")
@click.option("--dry-run", is_flag=True, help="Print the job script and submit nothing.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, help="Extra sbatch argument (repeatable).")
@click.option("--partition", default=None)
@click.option("--account", default=None)
@click.option("--qos", default=None)
@click.option("--time", "time_limit", default=None, help="Per-task time limit, e.g. 04:00:00.")
@click.option("--mem", default=None)
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None)
@click.option("--gres", default=None, help="Generic resources, e.g. gpu:1 ('' for none).")
@click.option("--constraint", default=None)
@click.option("--workers-per-task", type=click.IntRange(min=1), default=None,
              help="Worker processes per task, spread over its GPUs round robin, sharing its CPUs (default 1).")
def submit(ctx: Context, array: bool, tasks: int | None, max_parallel: int | None, dry_run: bool,
           sbatch_args: tuple[str, ...], partition: str | None, account: str | None, qos: str | None,
           time_limit: str | None, mem: str | None, cpus_per_task: int | None, gres: str | None,
           constraint: str | None, workers_per_task: int | None) -> None:
    """Submit a Slurm job array whose tasks claim studies until none is left."""
    overrides = {k: v for k, v in (("partition", partition), ("account", account), ("qos", qos),
                                   ("time", time_limit), ("mem", mem), ("cpus_per_task", cpus_per_task),
                                   ("gres", gres), ("constraint", constraint),
                                   ("workers_per_task", workers_per_task)) if v is not None}
    config = ctx.config()
    _submit(config, ctx.ledger(config), tasks=tasks, max_parallel=max_parallel, dry_run=dry_run,
            sbatch_args=list(sbatch_args), overrides=overrides)


@cli.command()
@project_options
@click.option("--json", "as_json", is_flag=True)
def sync(ctx: Context, as_json: bool) -> None:
    """Ask Slurm about the project's array jobs and mark studies of vanished tasks lost."""
    from .executors.slurm import SlurmError
    from .executors.slurm import sync as slurm_sync

    config = ctx.config()
    try:
        result = slurm_sync(config, ctx.ledger(config))
    except SlurmError as exc:
        fail(str(exc))
    if as_json:
        echo_json({"jobs": result.jobs, "marked_lost": result.marked_lost})
        return
    for job in result.jobs:
        states = ", ".join(f"{k} {v}" for k, v in sorted(job.get("task_states", {}).items()))
        click.echo(f"job {job['job_id']}: {states or 'unknown to Slurm'}")
    for sid in result.marked_lost:
        click.echo(f"study {sid}: marked lost")
    click.echo(f"{len(result.marked_lost)} studies marked lost")


@cli.command()
@project_options
def cancel(ctx: Context) -> None:
    """Cancel the project's array jobs and release their studies."""
    from .executors.slurm import SlurmError
    from .executors.slurm import cancel as slurm_cancel

    config = ctx.config()
    try:
        released = slurm_cancel(config, ctx.ledger(config))
    except SlurmError as exc:
        fail(str(exc))
    if released:
        click.echo(f"cancelled the project's arrays; {len(released)} studies released: {' '.join(released)}")
    else:
        click.echo("cancelled the project's unfinished arrays, if any; no study was held")


# -- single-file tools --------------------------------------------------------------------------

_SPINE_OPTION = click.option(
    "--spine", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
    help="The semantic mask (seg-spine) on the same grid: adds vertebral-body centroids (SPINEPS's ctd points).")
_UNLABELLED_OPTION = click.option("--unlabelled", is_flag=True,
                                  help="Labels are only a top-to-bottom order (no labeling model).")


def _measure_or_fail(vert: Path, spine: Path | None, unlabelled: bool) -> Any:
    from .measures import measure_file

    try:
        return measure_file(vert, spine=spine, labels_anatomical=not unlabelled)
    except StudyError as exc:
        fail(str(exc))


@cli.command()
@click.argument("seg", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_SPINE_OPTION
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON here instead of printing it.")
@_UNLABELLED_OPTION
def centroids(seg: Path, spine: Path | None, out: Path | None, unlabelled: bool) -> None:
    """Centroids (whole label and, with --spine, vertebral body), volumes, pieces and names of an instance mask."""
    measurements = _measure_or_fail(seg, spine, unlabelled)
    if out:
        write_json(out, measurements.centroids_json())
        click.echo(f"wrote {out}")
    else:
        echo_json(measurements.centroids_json())


@cli.command()
@click.argument("vert", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_SPINE_OPTION
@_UNLABELLED_OPTION
def lstv(vert: Path, spine: Path | None, unlabelled: bool) -> None:
    """LSTV findings of an instance mask as JSON: the `lstv` object the pipeline writes into the metadata."""
    echo_json(_measure_or_fail(vert, spine, unlabelled).lstv_json())


@cli.command()
@click.argument("dicom_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print what was found: slices used and dropped, geometry.")
@click.option("--plane", type=click.Choice(["sagittal", "coronal", "axial", "any"]), default="any",
              help="Require this plane (default: any).")
@click.option("--series", "series_uid", metavar="UID", default=None,
              help="Convert the series with this SeriesInstanceUID when the folder holds several.")
def convert(dicom_dir: Path, out: Path, as_json: bool, plane: str, series_uid: str | None) -> None:
    """Convert one DICOM series (classic or enhanced multi-frame) to NIfTI, or refuse with a one-line reason.

    OUT is written whole or not at all: a file already at OUT stays as it was when the conversion fails.
    """
    from .dicom import check_nifti_name, convert_series

    try:
        check_nifti_name(out)
    except ValueError as exc:
        fail(one_line(exc))
    try:
        report = convert_series(dicom_dir, out, require_plane=None if plane == "any" else plane,
                                series_uid=series_uid)
    except StudyError as exc:
        hint = "; convert one with --series UID" if exc.error_class == "input.mixed_series" else ""
        fail(f"{exc}{hint}", code=1)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(f"wrote {printable(out)}: {report.shape} voxels, spacing "
                   f"{tuple(round(s, 4) for s in report.spacing)} mm, {report.orientation}, "
                   f"{len(report.slices_used)} slices used, {len(report.slices_dropped)} dropped")
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--studies", "n_studies", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--matrix", type=click.IntRange(min=64), default=256, show_default=True,
              help="In-plane size of the sagittal series.")
@click.option("--no-broken", is_flag=True, help="Only good studies (by default the last three are broken).")
@click.option("--variant", "variants", multiple=True, metavar="NAME",
              help="Phantom variant to cycle through (repeatable; default all: normal, L6, T13, four_lumbar, "
                   "top_L2, eleven_thoracic, sacral_disc, top_L1, no_sacrum, duplicate_T12).")
@click.option("--layout", type=click.Choice(LAYOUT_CHOICES), default="rsna", show_default=True,
              help="Write the phantoms as an RSNA dataset, a BIDS dataset, a manifest or a PACS-style DICOM tree.")
def synth(directory: Path, n_studies: int, seed: int, matrix: int, no_broken: bool, variants: tuple[str, ...],
          layout: str) -> None:
    """Write a synthetic dataset (RSNA layout by default) with phantom spines and their ground truth."""
    made = _synth(directory, n_studies, seed, matrix, not no_broken, variants, layout)
    click.echo(f"wrote {len(made.ids)} studies to {made.root} ({made.layout} layout); study list {made.study_list}")
    click.echo(f"next: batchseg init --dataset {made.dataset} --studies {made.study_list} --segmenter reference")


def _synth(directory: Path, n_studies: int, seed: int, matrix: int, broken: bool,
           variants: tuple[str, ...] = (), layout: str = "rsna") -> Any:
    from .synth import VARIANTS
    from .synth_layouts import synth_layout

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        fail(f"unknown phantom variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    with click.progressbar(length=n_studies, label="synthesizing studies") as bar:
        return synth_layout(directory, layout, n_studies, seed, matrix=matrix, broken=broken,
                            variants=variants or None, progress=lambda done: bar.update(done - bar.pos))


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--studies", "n_studies", type=click.IntRange(min=4), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--matrix", type=click.IntRange(min=64), default=256, show_default=True)
@click.pass_context
def demo(click_ctx: click.Context, directory: Path, n_studies: int, workers: int, matrix: int) -> None:
    """Synthetic dataset in DIR/data, a project in DIR, init, run, status: the whole flow in one command."""
    directory = directory.resolve()
    made = _synth(directory / "data", n_studies, 0, matrix, True)
    common = ["--project", str(directory)]
    for args in (["init", "--dataset", str(made.dataset), "--studies", str(made.study_list),
                  "--segmenter", "reference"],
                 ["run", "--workers", str(workers)]):
        click.echo(f"\n$ batchseg {' '.join(args[:1] + common + args[1:])}")
        try:
            cli.main(args=args[:1] + common + args[1:], standalone_mode=False)
        except SystemExit as exc:
            if args[0] == "init" and exc.code:
                raise
    click.echo(f"\n$ batchseg status --project {directory}")
    cli.main(args=["status", *common], standalone_mode=False)
    from .synth import read_manifest

    broken = ", ".join(f"{sid} ({info['broken']})" for sid, info in read_manifest(made.root)["studies"].items()
                       if info["broken"])
    click.echo(f"\nbroken on purpose, so failed or skipped as they should be: {broken}")
    click.echo(f"outputs: {directory / 'results'}  (nifti/, segmentations/, centroids/, metadata/, qc/)")
    click.echo(f"ground truth: {made.root / 'ground_truth'}")


# -- SPINEPS weights ----------------------------------------------------------------------------

@cli.group()
def models() -> None:
    """SPINEPS weights: download once where there is internet, check offline everywhere else."""


@models.command("check")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), default=None,
              help="Weights folder (default: the project's models_dir, else $SPINEPS_SEGMENTOR_MODELS).")
@click.option("--project", default=None, envvar=PROJECT_ENV, help="Project folder to read models_dir from.")
def models_check(models_dir: Path | None, project: str | None) -> None:
    """Resolve each SPINEPS model without touching the network."""
    from .models import check_for_config

    try:
        config = load_config(Path(project).resolve() if project else find_project())
    except ConfigError:
        config = Config(project_dir=Path.cwd())  # no project: SPINEPS's defaults
    if models_dir is not None:
        config.models_dir = str(models_dir.resolve())
    check = check_for_config(config)
    for name, folder in check.found.items():
        click.echo(f"found {name}: {folder}")
    if not check.ok:
        fail(check.message, code=1)
    click.echo(check.message)
    if (config.project_dir / CONFIG_NAME).is_file():
        _echo_gpu_memory(config)


def _echo_gpu_memory(config: Config) -> None:
    from .ledger import Ledger
    from .report.model import gpu_memory_seen

    ledger = Ledger.for_config(config)
    try:
        seen = gpu_memory_seen(config, ledger)
    finally:
        ledger.close()
    if not seen:
        click.echo("GPU memory per worker: not known yet (no study of this project has run SPINEPS on a GPU; "
                   "`python benchmarks/gpu.py networks` measures it on any GPU)")
    for item in seen:
        click.echo(f"GPU memory per worker on {item.gpu}: {item.peak_mb / 1024:.1f} GiB held by torch at the peak "
                   f"(the largest of {item.studies} done studies), plus the CUDA context, which torch does not "
                   f"count: workers per GPU times this must fit in the GPU")


@models.command("download")
@click.option("--to", "to", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to put the three model folders in (then point models_dir at it).")
def models_download(to: Path) -> None:
    """Fetch SPINEPS's three release folders (needs internet; run it on a login node)."""
    from .models import download_models

    try:
        folders = download_models(to)
    except (RuntimeError, OSError) as exc:
        fail(f"download failed: {exc}", code=1)
    for folder in folders:
        click.echo(f"downloaded {folder}")


# -- the data -----------------------------------------------------------------------------------

@cli.command()
@click.option("--to", "to", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder to fill (then `batchseg init --dataset` it).")
@click.option("--competition", default=None,
              help="Kaggle competition (default: rsna-2024-lumbar-spine-degenerative-classification).")
@click.option("--studies", "studies_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Only these studies: .npy, .csv (study_id column) or .txt, as for init.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N studies of the list (of the CSV without --studies).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--all-series", is_flag=True, help="Every series of those studies, not only Sagittal T2/STIR.")
@click.option("--jobs", type=click.IntRange(min=1, max=32), default=4, show_default=True,
              help="Files fetched at once (per-study download).")
@click.option("--refresh-listing", is_flag=True, help="Ask Kaggle for the file listing again, not the cached one.")
@click.option("--keep-archive", is_flag=True, help="Whole download: keep the zip after unpacking it.")
def download(to: Path, competition: str | None, studies_file: Path | None, limit: int | None, split: str,
             all_series: bool, jobs: int, refresh_listing: bool, keep_archive: bool) -> None:
    """Fetch the RSNA 2024 data from Kaggle (needs the kaggle extra, credentials and internet).

    Without --studies or --limit: the whole competition archive (~35 GB), unpacked into the folder.
    With them: the split's CSVs, then only those studies' Sagittal T2/STIR series, file by file.
    Run it again to resume: complete files are kept.
    """
    from .dataset import DatasetError, load_study_list
    from .download import (COMPETITION, DownloadError, KaggleSource, check_competition, check_studies,
                           download_archive, download_studies)

    to = to.resolve()
    live = _LiveLine()
    try:
        competition = check_competition(competition or COMPETITION)
        studies = check_studies(load_study_list(studies_file)) if studies_file else None
        source = KaggleSource.connect()
        for note in source.notes:
            click.echo(f"kaggle: {note}", err=True)
        if studies is None and limit is None:
            result = download_archive(source, to, competition=competition, keep_archive=keep_archive,
                                      report=live.note, on_extract=lambda p: live.show(
                                          f"unpacking: {p.finished}/{p.total} files "
                                          f"({p.present} already there)"))
            live.end()
            if result.already_complete:
                click.echo(f"{to}: {competition} is already unpacked here (delete "
                           f"{to}/.batchseg_download/archive-{competition}.done to fetch it again)")
            else:
                click.echo(f"unpacked {result.extracted} files into {to} ({result.present} were already there)")
            return
        fetched = download_studies(source, to, competition=competition, split=split, studies=studies, limit=limit,
                                   all_series=all_series, jobs=jobs, refresh_listing=refresh_listing,
                                   report=live.note,
                                   on_page=lambda pages, n: live.show(f"listing {competition}: page {pages}, "
                                                                      f"{n} files"),
                                   on_progress=lambda p: live.show(
                                       f"files {p.finished}/{p.total}: {p.done} downloaded "
                                       f"({p.bytes / 1e6:.1f} MB), {p.present} already there, {p.failed} failed"))
        live.end()
    except DatasetError as exc:
        live.end()
        fail(f"{exc.error_class}: {exc.message}")
    except DownloadError as exc:
        live.end()
        fail(exc.message, code=exc.code)
    for warning in fetched.warnings:
        click.echo(f"warning: {warning}", err=True)
    files = fetched.files
    click.echo(f"{len(fetched.studies)} studies, {len(fetched.series)} series: {len(files.downloaded)} files "
               f"downloaded, {len(files.present)} already there, {len(files.failed)} failed; dataset in {to}")
    if files.failed:
        for name, why in files.failed[:10]:
            click.echo(f"  failed {why if why.startswith(name) else f'{name}: {why}'}", err=True)
        click.echo("run the same command again to fetch the missing files", err=True)
        sys.exit(1)


def main() -> None:
    try:
        cli.main(prog_name="batchseg")
    except ConfigError as exc:
        fail(str(exc))
    except (RuntimeError, OSError) as exc:
        fail(one_line(exc, 300))
    except Exception as exc:
        if not isinstance(exc, _database_errors()):
            raise
        # An unreachable or locked database, a wrong URL: one line, not a traceback.
        fail(f"ledger: {one_line(getattr(exc, 'orig', None) or exc, 300)}")


def _database_errors() -> tuple[type[BaseException], ...]:
    """The database errors of the modules this process loaded: SQLAlchemy's (every ledger call but one) and
    sqlite3's (status's plain reader). Looked up, not imported: importing SQLAlchemy costs 0.3 s."""
    found = [getattr(sys.modules.get(name), attr, None) for name, attr in (("sqlalchemy.exc", "SQLAlchemyError"),
                                                                          ("sqlite3", "Error"))]
    return tuple(e for e in found if e is not None)


if __name__ == "__main__":
    main()
