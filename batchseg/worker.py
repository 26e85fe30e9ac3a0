"""The claim loop that a local worker process and a Slurm array task both run.

claim -> pipeline -> done | failed -> claim again, until nothing is pending, the
study quota is reached, the time left is shorter than one more study, or a
signal asks to stop. A heartbeat thread keeps the claim's lease fresh. SIGTERM,
SIGINT and SIGUSR1 (Slurm's early warning) release the current study without
charging the attempt, and the worker exits 0.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Callable, TextIO, TypeVar

from .annotations import AnnotationTable, StudyAnnotations, annotation_csv, file_stamp, read_project_annotations
from .config import Config, mask_passwords
from .dataset import is_valid_id, printable_id
from .errors import LedgerUnreachable, SetupError, StudyError, one_line
from .files import write_atomic
from .inputs import locate
from .ledger import Claim, Ledger, WorkerInfo
from .outputs import findings_digest
from .pipeline import StudyInput, run_study
from .segmenters import Segmenter, load_segmenter

log = logging.getLogger("batchseg.worker")
T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# The next study must fit in the time left with this factor and slack to spare.
BUDGET_FACTOR = 1.5
BUDGET_SLACK_SECONDS = 30.0
# Nothing pending but studies still held elsewhere: look again this often (seconds, at most).
WAIT_POLL_SECONDS = 2.0
# Under a deadline, the median study time is asked of the ledger at most this often (it moves slowly).
EXPECTED_REFRESH_SECONDS = 60.0


class Interrupted(BaseException):
    """Raised in the main thread by a stop signal while a study runs (BaseException: no stage may swallow it)."""


@dataclass
class WorkerStats:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)     # attempts that failed (retried or not)
    released: list[str] = field(default_factory=list)
    stop_reason: str = ""
    setup_error: str = ""                                # set: the worker could not run at all
    ledger_error: str = ""                               # set: it gave up on an unreachable ledger


class Heartbeat(threading.Thread):
    """Renews the claim's lease every `interval` seconds; notices when the claim was taken over."""

    def __init__(self, ledger: Ledger, claim: Claim, interval: float, lease: float) -> None:
        super().__init__(name=f"heartbeat-{claim.study_id}", daemon=True)
        self.ledger, self.claim, self.interval, self.lease = ledger, claim, interval, lease
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                if not self.ledger.heartbeat(self.claim, self.lease):
                    self.lost.set()
                    return
            except Exception as exc:  # a busy database must not kill the study; the lease has slack
                log.warning("heartbeat for study %s failed: %s", self.claim.study_id, exc)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# Waits between tries of an unreachable ledger: 1, 2, 4 ... seconds, never longer than this.
MAX_RETRY_WAIT_SECONDS = 30.0


def ledger_unreachable(exc: BaseException) -> bool:
    """Whether a ledger call failed because the database could not be reached or was locked.

    Such a call may succeed if tried again; anything else (a bad statement, a constraint) will not.
    """
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def with_retries(call: Callable[..., T], *args: object, window: float = 600.0, first_wait: float = 1.0) -> T:
    """Run a ledger call, waiting and trying again while the database is unreachable or locked.

    SQLite already waits out ordinary lock contention (its busy timeout); this covers a database
    restart or failover and a long lock on a shared filesystem, which would otherwise kill the
    worker mid-batch. Waits double from `first_wait` up to MAX_RETRY_WAIT_SECONDS, one log line
    each; after `window` seconds of failures it raises LedgerUnreachable.
    """
    started = time.monotonic()
    wait = first_wait
    while True:
        try:
            return call(*args)
        except Exception as exc:
            if not ledger_unreachable(exc):
                raise
            cause = one_line(getattr(exc, "orig", None) or exc, 200)
            waited = time.monotonic() - started
            if waited + wait > window:
                raise LedgerUnreachable(f"the ledger stayed unreachable for {waited:.0f} s "
                                        f"(db_retry_seconds = {window:.0f}): {cause}") from exc
            log.warning("ledger call %s failed (%s); trying again in %.0f s (%.0f s of %.0f s waited)",
                        getattr(call, "__name__", "call"), cause, wait, waited, window)
            time.sleep(wait)
            wait = min(wait * 2, MAX_RETRY_WAIT_SECONDS)


# ECMA-48 escape sequences (colours, cursor moves) that SPINEPS's logger (TPTBox) prints.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


class PlainText:
    """A text stream that writes what it gets without terminal escape codes and URL passwords.

    A worker's stdout and stderr are its log file (`run`) or Slurm's `%A_%a.out`: colour codes
    only garble them, and a password must never land in them.
    """

    def __init__(self, stream: TextIO, *, strip_escapes: bool) -> None:
        self._stream = stream
        self._strip = strip_escapes

    def write(self, text: str) -> int:
        clean = mask_passwords(_ESCAPES.sub("", text) if self._strip else text)
        self._stream.write(clean)
        return len(text)

    def __getattr__(self, name: str) -> object:   # flush, fileno, encoding, isatty, ...
        return getattr(self._stream, name)


def plain_streams() -> None:
    """Route this process's stdout and stderr through PlainText (escape codes kept on a terminal)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, PlainText):
            setattr(sys, name, PlainText(stream, strip_escapes=not stream.isatty()))


def preflight(config: Config) -> str:
    """Why this worker cannot run at all ('' when it can): checked before any claim."""
    if config.segmenter != "spineps":
        return ""
    from .models import check_for_config

    check = check_for_config(config)
    return "" if check.ok else check.message


def expected_study_seconds(ledger: Ledger) -> float | None:
    durations = ledger.study_seconds()
    return statistics.median(durations) if durations else None


def has_time_for_another(deadline: float | None, expected: float | None, now: float) -> bool:
    if deadline is None or expected is None:
        return deadline is None or now < deadline
    return now + expected * BUDGET_FACTOR + BUDGET_SLACK_SECONDS < deadline


class Worker:
    def __init__(self, config: Config, *, segmenter: Segmenter | None = None, deadline: float | None = None,
                 max_studies: int | None = None) -> None:
        self.config = config
        # A worker that starts while the database restarts waits for it like any other ledger call.
        self.ledger = with_retries(Ledger.for_config, config, window=config.db_retry_seconds)
        self.identity = WorkerInfo.from_environment()
        self.segmenter = segmenter
        self.deadline = deadline
        self.max_studies = max_studies
        self.log_dir = config.logs_dir / "studies"
        self.stats = WorkerStats()
        self._stop_signal: str | None = None
        self._in_study = False
        self._holding: str | None = None          # the study claimed and not yet ended, for the give-up line
        self._expected: tuple[float, float | None] | None = None   # (when asked, median study seconds)
        self._annotations: tuple[tuple[int, int] | None, AnnotationTable] | None = None   # (file stamp, table)

    # Signals arrive in the main thread between bytecodes. Inside a study we raise at once so
    # the study is released before Slurm's SIGKILL; between studies a flag is enough.
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signal.Signals(signum).name
        if self._in_study:
            self._in_study = False
            raise Interrupted(self._stop_signal)

    def run(self) -> WorkerStats:
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            self._loop()
        except LedgerUnreachable as exc:
            held = (f"; study {self._holding} stays running until its lease runs out" if self._holding else "")
            self.stats.ledger_error = f"{exc}{held}"
            self.stats.stop_reason = f"gave up: {self.stats.ledger_error}"
            log.error("worker gives up: %s", self.stats.ledger_error)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.ledger.close()
        return self.stats

    def _retry(self, call: Callable[..., T], *args: object) -> T:
        return with_retries(call, *args, window=self.config.db_retry_seconds)

    def _should_claim(self) -> bool:
        if self._stop_signal:
            self.stats.stop_reason = f"signal {self._stop_signal}"
            return False
        handled = len(self.stats.done) + len(self.stats.failed)
        if self.max_studies is not None and handled >= self.max_studies:
            self.stats.stop_reason = f"quota of {self.max_studies} studies reached"
            return False
        if not has_time_for_another(self.deadline, self._expected_seconds(), time.time()):
            self.stats.stop_reason = "time budget: not enough time left for another study"
            return False
        return True

    def _expected_seconds(self) -> float | None:
        """The median study time, only when a deadline needs it, and cached for a minute."""
        if self.deadline is None:
            return None
        now = time.monotonic()
        if self._expected is None or now - self._expected[0] >= EXPECTED_REFRESH_SECONDS:
            self._expected = (now, self._retry(expected_study_seconds, self.ledger))
        return self._expected[1]

    def _loop(self) -> None:
        problem = preflight(self.config)
        if problem:
            self._give_up(problem)
            return
        waiting_said = False
        while self._should_claim():
            claim = self._retry(self.ledger.claim, self.identity, self.config.lease_seconds)
            if claim is None:
                # Studies other workers hold may still come back (a retryable failure, a dead worker's
                # expired lease): stay until they end, or nobody would be left to take them.
                held = self._retry(self.ledger.running)
                if not held:
                    self.stats.stop_reason = "no pending studies"
                    return
                if not waiting_said:
                    log.info("nothing pending; waiting for %d studies other workers hold (until they end "
                             "or their lease runs out)", len(held))
                    waiting_said = True
                soonest = min(a.lease_expires_at or 0.0 for a in held) - time.time()
                self._pause(max(1.0, min(soonest + 1.0, WAIT_POLL_SECONDS, self.config.heartbeat_seconds)))
                continue
            waiting_said = False
            self._holding = claim.study_id
            try:
                if self.segmenter is None:
                    # Loaded after the first claim so an idle task never pays for the model.
                    self.segmenter = self._load_segmenter()
                self._process(claim)
            except SetupError as exc:
                self._retry(self.ledger.release, claim, f"released: this worker cannot run the segmenter: {exc}")
                self.stats.released.append(claim.study_id)
                self._give_up(str(exc))
                return
            self._holding = None
            if self._stop_signal:
                self.stats.stop_reason = f"signal {self._stop_signal}"
                return

    def _pause(self, seconds: float) -> None:
        """Sleep, in short steps so that a stop signal ends the wait at once."""
        end = time.monotonic() + seconds
        while not self._stop_signal and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))

    def _give_up(self, problem: str) -> None:
        self.stats.setup_error = " ".join(problem.split())
        self.stats.stop_reason = f"cannot run: {self.stats.setup_error}"
        log.error("worker cannot run: %s", self.stats.setup_error)

    def _load_segmenter(self) -> Segmenter:
        try:
            return load_segmenter(self.config.segmenter, self.segmenter_options())
        except SetupError:
            raise
        except Exception as exc:  # a bad option or device in batchseg.toml: no study can run here
            raise SetupError(f"segmenter {self.config.segmenter!r} could not start: "
                             f"{type(exc).__name__}: {exc}") from exc

    def segmenter_options(self) -> dict:
        options = dict(self.config.segmenter_options)
        if self.config.segmenter == "spineps" and self.config.models_path:
            options.setdefault("models_dir", str(self.config.models_path))
        return options

    def _process(self, claim: Claim) -> None:
        beat = Heartbeat(self.ledger, claim, self.config.heartbeat_seconds, self.config.lease_seconds)
        beat.start()
        log.info("study %s: attempt %d started", claim.study_id, claim.attempt)
        try:
            try:
                self._in_study = True
                if self._stop_signal:  # arrived between the claim and here: give the study back now
                    raise Interrupted(self._stop_signal)
                # Inside the try: a crafted ledger row (an id that cannot be a path) fails the study alone.
                study = StudyInput(claim.study_id, locate(self.config, claim), claim.series_id, claim.attempt,
                                   link_nifti=self.config.nifti_input == "link",
                                   annotations=self._study_annotations(claim), token=claim.token)
                assert self.segmenter is not None
                outcome = run_study(study, self.segmenter, self.config.out_dir,
                                    may_publish=lambda: self._may_publish(claim, beat),
                                    lock_timeout=self.config.lease_seconds)
            finally:
                self._in_study = False
                beat.stop()
        except Interrupted as signal_name:
            self._retry(self.ledger.release, claim, f"released on {signal_name}")
            self.stats.released.append(claim.study_id)
            log.info("study %s: released on %s", claim.study_id, signal_name)
            return
        except StudyError as error:
            self._record_failure(claim, error)
            return
        except (SetupError, LedgerUnreachable):
            raise
        except Exception as exc:  # never let one study end the batch
            self._record_failure(claim, StudyError("internal", f"study {claim.study_id}: {type(exc).__name__}: {exc}"))
            return
        # What the report reads of the published files, kept in the ledger beside the done state (outputs.py).
        # Only a shortcut for the report: whatever goes wrong making it, the study is done without one.
        try:
            findings = findings_digest(self.config.out_dir, claim.study_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("study %s: no findings digest for the report (%s: %s); it will read the files",
                        claim.study_id, type(exc).__name__, exc)
            findings = None
        if self._retry(self.ledger.complete, claim, outcome.outputs, outcome.timings, findings):
            self.stats.done.append(claim.study_id)
            log.info("study %s: done in %.1f s", claim.study_id, outcome.timings.get("total", 0.0))
        else:
            log.warning("study %s: finished, but the claim had been taken over; the newer attempt owns it",
                        claim.study_id)

    def _study_annotations(self, claim: Claim) -> StudyAnnotations:
        """The study's level points: the dataset's annotation file is read once per worker (again when it changes)."""
        if self.config.layout != "rsna":
            # Level points come with the RSNA layout only (<split>_label_coordinates.csv).
            return AnnotationTable(Path(f"{self.config.split}_label_coordinates.csv"),
                                   error=f"the level check reads RSNA level annotations; this project's dataset "
                                         f"layout is {self.config.layout}").for_study(claim.study_id, claim.series_id)
        dataset = self.config.dataset_dir
        stamp = file_stamp(annotation_csv(dataset, self.config.split)) if dataset is not None else None
        if self._annotations is None or self._annotations[0] != stamp:
            table = read_project_annotations(dataset, self.config.split)
            for line in table.warnings() if stamp is not None else []:   # an absent file is no news
                log.warning("level annotations: %s", line)
            self._annotations = (stamp, table)
        return self._annotations[1].for_study(claim.study_id, claim.series_id)

    def _may_publish(self, claim: Claim, beat: Heartbeat) -> bool:
        """Asked by the pipeline, under the study's publish lock, right before it renames outputs into place.

        False only when the ledger says the token no longer holds. An unreachable database is
        waited for (the token's next write usually succeeds); past the retry window the worker
        gives up with LedgerUnreachable, publishing nothing and charging nothing.
        """
        # From here on a stop signal only ends the loop: a half-published study helps nobody.
        self._in_study = False
        if self._stop_signal:
            raise Interrupted(self._stop_signal)
        if beat.lost.is_set():   # the heartbeat's UPDATE found the token gone: definite
            return False
        # The heartbeat thread may have been failing silently: ask the ledger itself.
        return self._retry(self.ledger.heartbeat, claim, self.config.lease_seconds)

    def _record_failure(self, claim: Claim, error: StudyError) -> None:
        log_path = self._write_study_log(claim, error)
        state = self._retry(self.ledger.fail, claim, error.error_class, error.message,
                            str(log_path) if log_path else None)
        self.stats.failed.append(claim.study_id)
        log.warning("study %s: %s (now %s)", printable_id(claim.study_id), error, state or "taken over")

    def _write_study_log(self, claim: Claim, error: StudyError) -> Path | None:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            # The token makes the name unique: retry-failed starts the attempt count again.
            # An id that is not a plain number never becomes part of a file name.
            name = claim.study_id if is_valid_id(claim.study_id) else "bad-id"
            path = self.log_dir / f"{name}_attempt{claim.attempt}_{claim.token[:8]}.log"
            cause = error.__cause__ or error
            text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
            write_atomic(path, f"study {printable_id(claim.study_id)} attempt {claim.attempt} on "
                               f"{self.identity.host} pid {self.identity.pid}\n{error}\n\n{text}")
            return path
        except OSError:
            return None


def run_worker(config: Config, *, max_studies: int | None = None,
               deadline_source: Callable[[], float | None] | None = None) -> WorkerStats:
    """Run the claim loop in this process. Inside Slurm the deadline comes from the allocation."""
    from .placement import GPU_ENV, worker_threads

    deadline = deadline_source() if deadline_source is not None else None
    log.info("worker pid %d: %s=%s, %d CPU thread(s)", os.getpid(), GPU_ENV, os.environ.get(GPU_ENV, "(unset)"),
             worker_threads())
    try:
        worker = Worker(config, deadline=deadline, max_studies=max_studies)
    except LedgerUnreachable as exc:
        stats = WorkerStats(ledger_error=str(exc), stop_reason=f"gave up: {exc}")
        log.error("worker gives up: %s", exc)
        return stats
    return worker.run()
