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
import signal
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Callable, TypeVar

from .config import Config
from .dataset import series_folder
from .errors import SetupError, StudyError, one_line
from .ledger import Claim, Ledger, WorkerInfo
from .pipeline import StudyInput, run_study
from .segmenters import Segmenter, load_segmenter

log = logging.getLogger("batchseg.worker")
T = TypeVar("T")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# The next study must fit in the time left with this factor and slack to spare.
BUDGET_FACTOR = 1.5
BUDGET_SLACK_SECONDS = 30.0


class Interrupted(BaseException):
    """Raised in the main thread by a stop signal while a study runs (BaseException: no stage may swallow it)."""


@dataclass
class WorkerStats:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)     # attempts that failed (retried or not)
    released: list[str] = field(default_factory=list)
    stop_reason: str = ""
    setup_error: str = ""                                # set: the worker could not run at all


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


def with_retries(call: Callable[..., T], *args: object, attempts: int = 6, first_wait: float = 1.0) -> T:
    """Run a ledger call, waiting and trying again while the database is unreachable or locked.

    SQLite already waits out ordinary lock contention (its busy timeout); this covers a database
    restart or a long lock on a shared filesystem, which would otherwise kill the worker mid-batch.
    """
    from sqlalchemy.exc import OperationalError

    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return call(*args)
        except OperationalError as exc:
            if attempt == attempts:
                raise
            log.warning("ledger call %s failed (%s); trying again in %.0f s", call.__name__,
                        one_line(exc.orig or exc, 200), wait)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


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
        self.ledger = Ledger.for_config(config)
        self.identity = WorkerInfo.from_environment()
        self.segmenter = segmenter
        self.deadline = deadline
        self.max_studies = max_studies
        self.log_dir = config.logs_dir / "studies"
        self.stats = WorkerStats()
        self._stop_signal: str | None = None
        self._in_study = False

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
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.ledger.close()
        return self.stats

    def _should_claim(self) -> bool:
        if self._stop_signal:
            self.stats.stop_reason = f"signal {self._stop_signal}"
            return False
        handled = len(self.stats.done) + len(self.stats.failed)
        if self.max_studies is not None and handled >= self.max_studies:
            self.stats.stop_reason = f"quota of {self.max_studies} studies reached"
            return False
        if not has_time_for_another(self.deadline, expected_study_seconds(self.ledger), time.time()):
            self.stats.stop_reason = "time budget: not enough time left for another study"
            return False
        return True

    def _loop(self) -> None:
        problem = preflight(self.config)
        if problem:
            self._give_up(problem)
            return
        while self._should_claim():
            claim = with_retries(self.ledger.claim, self.identity, self.config.lease_seconds)
            if claim is None:
                self.stats.stop_reason = "no pending studies"
                return
            try:
                if self.segmenter is None:
                    # Loaded after the first claim so an idle task never pays for the model.
                    self.segmenter = self._load_segmenter()
                self._process(claim)
            except SetupError as exc:
                with_retries(self.ledger.release, claim, f"released: this worker cannot run the segmenter: {exc}")
                self.stats.released.append(claim.study_id)
                self._give_up(str(exc))
                return
            if self._stop_signal:
                self.stats.stop_reason = f"signal {self._stop_signal}"
                return

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
        study = StudyInput(claim.study_id, self._series_dir(claim), claim.series_id, claim.attempt)
        log.info("study %s: attempt %d started", claim.study_id, claim.attempt)
        try:
            try:
                self._in_study = True
                if self._stop_signal:  # arrived between the claim and here: give the study back now
                    raise Interrupted(self._stop_signal)
                assert self.segmenter is not None
                outcome = run_study(study, self.segmenter, self.config.out_dir,
                                    may_publish=lambda: self._may_publish(claim, beat))
            finally:
                self._in_study = False
                beat.stop()
        except Interrupted as signal_name:
            with_retries(self.ledger.release, claim, f"released on {signal_name}")
            self.stats.released.append(claim.study_id)
            log.info("study %s: released on %s", claim.study_id, signal_name)
            return
        except StudyError as error:
            self._record_failure(claim, error)
            return
        except SetupError:
            raise
        except Exception as exc:  # never let one study end the batch
            self._record_failure(claim, StudyError("internal", f"study {claim.study_id}: {type(exc).__name__}: {exc}"))
            return
        if with_retries(self.ledger.complete, claim, outcome.outputs, outcome.timings):
            self.stats.done.append(claim.study_id)
            log.info("study %s: done in %.1f s", claim.study_id, outcome.timings.get("total", 0.0))
        else:
            log.warning("study %s: finished, but the claim had been taken over; the newer attempt owns it",
                        claim.study_id)

    def _series_dir(self, claim: Claim) -> Path:
        # From the config, not the path stored at init: a dataset moved or mounted elsewhere since
        # then is found again by editing one line of batchseg.toml.
        if self.config.dataset_dir is not None and claim.series_id:
            return series_folder(self.config.dataset_dir, self.config.split, claim.study_id, claim.series_id)
        return Path(claim.input_path or "")

    def _may_publish(self, claim: Claim, beat: Heartbeat) -> bool:
        """Asked by the pipeline right before it renames outputs into place."""
        # From here on a stop signal only ends the loop: a half-published study helps nobody.
        self._in_study = False
        if self._stop_signal:
            raise Interrupted(self._stop_signal)
        if beat.lost.is_set():
            return False
        try:  # the heartbeat thread may have been failing silently: ask the ledger itself
            return self.ledger.heartbeat(claim, self.config.lease_seconds)
        except Exception as exc:
            log.warning("study %s: cannot confirm the claim before publishing: %s", claim.study_id, exc)
            return False

    def _record_failure(self, claim: Claim, error: StudyError) -> None:
        log_path = self._write_study_log(claim, error)
        state = with_retries(self.ledger.fail, claim, error.error_class, error.message,
                             str(log_path) if log_path else None)
        self.stats.failed.append(claim.study_id)
        log.warning("study %s: %s (now %s)", claim.study_id, error, state or "taken over")

    def _write_study_log(self, claim: Claim, error: StudyError) -> Path | None:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            # The token makes the name unique: retry-failed starts the attempt count again.
            path = self.log_dir / f"{claim.study_id}_attempt{claim.attempt}_{claim.token[:8]}.log"
            cause = error.__cause__ or error
            text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
            path.write_text(f"study {claim.study_id} attempt {claim.attempt} on {self.identity.host} "
                            f"pid {self.identity.pid}\n{error}\n\n{text}")
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
    return Worker(config, deadline=deadline, max_studies=max_studies).run()
