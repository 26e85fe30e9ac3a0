"""Reconciling the ledger with Slurm: parse squeue and sacct, decide which running studies are lost, cancel.

All the project's array jobs are asked about in one `squeue` call (it alone reports requeue
restart counts, and it still knows jobs that ended less than MinJobAge ago) and, for jobs
squeue no longer knows, one `sacct` call when accounting is enabled. Ledger attempts are
matched to Slurm tasks on (SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID): SLURM_JOB_ID alone is
ambiguous because the last task to start reuses the array's own job id.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from ...config import Config
from ...errors import one_line
from .client import SlurmError, parse_timestamp, run_slurm

CLOCK_SKEW = 5.0                     # seconds of tolerance between the controller's and a worker's clock

# Slurm states in which the task's processes are gone for good.
ENDED_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})
# States in which the task waits to (re)start: no worker of it can be running.
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
# Anything else (RUNNING, COMPLETING, SUSPENDED, CONFIGURING, ...) may still have a live worker.

SQUEUE_FIELDS = ("ArrayJobID", "ArrayTaskID", "JobID", "State", "RestartCnt", "StartTime", "Reason")
SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Start", "Elapsed", "NodeList")


@dataclass
class SyncResult:
    jobs: list[dict[str, Any]]       # per array job: job_id, array_spec, source, task_states, tasks
    marked_lost: list[str]           # study ids


@dataclass
class TaskState:
    """What Slurm says about one array task (or one plain job: task_id None)."""

    array_job_id: str
    task_id: str | None
    job_id: str                      # the task's own job id
    state: str                       # base state: RUNNING, TIMEOUT, CANCELLED, ...
    restarts: int | None = None      # requeue count (squeue only)
    start: float | None = None       # epoch seconds of the current incarnation's start
    detail: str = ""                 # reason (squeue) or exit code (sacct)

    @property
    def label(self) -> str:
        return f"{self.array_job_id}_{self.task_id}" if self.task_id is not None else self.array_job_id


@dataclass
class JobReport:
    job_id: str
    source: str                      # squeue | sacct | unknown (Slurm no longer knows the job)
    tasks: dict[str | None, TaskState] = field(default_factory=dict)


# -- asking Slurm about jobs -------------------------------------------------------------------

def _base_state(text: str) -> str:
    # "CANCELLED by 0" (sacct), "COMPLETING" ...: the first word is the state
    return text.strip().split(" ")[0].rstrip("+").upper() if text.strip() else "UNKNOWN"


def _task_id(text: str) -> str | None:
    text = text.strip()
    return text if text.isdigit() else None


def parse_squeue(text: str) -> list[TaskState]:
    """Lines of `squeue -h -r -O ArrayJobID:|,ArrayTaskID:|,JobID:|,State:|,RestartCnt:|,StartTime:|,Reason:|`."""
    found = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < len(SQUEUE_FIELDS) or not parts[0].strip().isdigit():
            continue
        array_job, task, job, state, restarts, start, reason = (p.strip() for p in parts[:len(SQUEUE_FIELDS)])
        found.append(TaskState(array_job, _task_id(task), job, _base_state(state),
                               int(restarts) if restarts.isdigit() else None, parse_timestamp(start), reason))
    return found


def _expand_indices(text: str) -> list[str]:
    """'2-5%2' or '1,3-4' -> the task ids it names."""
    text = text.split("%", 1)[0]
    ids: list[str] = []
    for part in text.split(","):
        if not part:
            continue
        step = 1
        if ":" in part:
            part, step_text = part.split(":", 1)
            step = int(step_text)
        if "-" in part:
            low, high = part.split("-", 1)
            ids += [str(i) for i in range(int(low), int(high) + 1, step)]
        else:
            ids.append(str(int(part)))
    return ids


def parse_sacct(text: str) -> list[TaskState]:
    """Lines of `sacct -X -P -n -o JobID,JobIDRaw,State,ExitCode,Start,Elapsed,NodeList`."""
    found = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        job_field, raw, state, exit_code, start = (p.strip() for p in parts[:5])
        match = re.fullmatch(r"(\d+)(?:_(\d+|\[[^\]]*\]))?", job_field)
        if not match:
            continue                                   # steps and heterogeneous jobs
        array_job, index = match.group(1), match.group(2)
        base = _base_state(state)
        if index is None:
            found.append(TaskState(array_job, None, raw or array_job, base, None, parse_timestamp(start), exit_code))
        elif index.startswith("["):                    # tasks not started yet: one record for many
            for task in _expand_indices(index[1:-1]):
                found.append(TaskState(array_job, task, raw or array_job, base, None, None, exit_code))
        else:
            found.append(TaskState(array_job, index, raw or array_job, base, None, parse_timestamp(start), exit_code))
    return found


_ACCOUNTING: dict[str, bool] = {}      # per SLURM_CONF: False once sacct said accounting is disabled


def _squeue(job_ids: Sequence[str]) -> list[TaskState]:
    """Every task of these jobs that squeue still knows, in one call (SlurmError if it cannot answer)."""
    fmt = ",".join(f"{name}:|" for name in SQUEUE_FIELDS)   # ":|": no padding, '|' after each field
    out = run_slurm(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-O", fmt])
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:             # none of them is known any more
            return []
        raise SlurmError(f"squeue failed: {one_line(out.stderr or out.stdout)}")
    return parse_squeue(out.stdout)


def _sacct(job_ids: Sequence[str], since: float | None) -> list[TaskState] | None:
    """Records from accounting, or None when accounting is disabled or not answering."""
    key = os.environ.get("SLURM_CONF", "")
    if _ACCOUNTING.get(key) is False:
        return None
    argv = ["sacct", "-X", "-P", "-n", "-j", ",".join(job_ids), "-o", ",".join(SACCT_FIELDS)]
    if since:
        # job ids are reused after a controller reset: only look from the first submission on
        argv += ["-S", _dt.datetime.fromtimestamp(since - 86400).strftime("%Y-%m-%dT%H:%M:%S")]
    try:
        out = run_slurm(argv)
    except SlurmError:
        return None
    if "accounting storage is disabled" in (out.stderr + out.stdout).lower():
        _ACCOUNTING[key] = False
        return None
    if out.returncode != 0:
        return None
    return parse_sacct(out.stdout)


def query_jobs(job_ids: Iterable[str], since: float | None = None) -> dict[str, JobReport]:
    """What Slurm knows about these jobs: one squeue call, plus one sacct call for those squeue forgot."""
    ids = list(dict.fromkeys(j for j in job_ids if j and str(j).isdigit()))
    reports = {j: JobReport(j, "unknown") for j in ids}
    if not ids:
        return reports
    for record in _squeue(ids):
        report = reports.get(record.array_job_id) or reports.get(record.job_id)
        if report is not None:
            report.source = "squeue"
            report.tasks[record.task_id] = record
    missing = [j for j, r in reports.items() if r.source == "unknown"]
    if missing:
        for record in _sacct(missing, since) or []:
            report = reports.get(record.array_job_id)
            if report is not None:
                report.source = "sacct"
                report.tasks[record.task_id] = record
    return reports


# -- which running studies are lost ----------------------------------------------------------

def _attempt_key(worker: Any) -> tuple[str, str | None] | None:
    array_job = getattr(worker, "slurm_array_job_id", None)
    if array_job:
        return str(array_job), getattr(worker, "slurm_array_task_id", None)
    job = getattr(worker, "slurm_job_id", None)
    return (str(job), None) if job else None


def lost_reason(attempt: Any, report: JobReport | None) -> str | None:
    """Why the worker of a running attempt cannot be alive any more, or None if it may be."""
    key = _attempt_key(attempt.worker)
    if key is None or report is None:
        return None
    job_id, task_id = key
    label = f"{job_id}_{task_id}" if task_id is not None else job_id
    if report.source == "unknown":
        return f"Slurm no longer knows job {job_id} (it ended more than MinJobAge ago, or is not this cluster's)"
    task = report.tasks.get(task_id)
    if task is None:
        return f"Slurm no longer knows task {label}"
    where = f"slurm task {label} (job {task.job_id})"
    if task.state in ENDED_STATES:
        code = f", exit {task.detail}" if report.source == "sacct" and task.detail else ""
        return f"{where} {task.state}{code} while the ledger showed the study running"
    if task.state in WAITING_STATES:
        return f"{where} was requeued (now {task.state}, restart {task.restarts or 0})"
    mine = getattr(attempt.worker, "slurm_restart_count", None)
    if task.restarts is not None and mine is not None and task.restarts > mine:
        return f"{where} was requeued: it runs restart {task.restarts}, the attempt was restart {mine}"
    if task.start is not None and attempt.claimed_at and attempt.claimed_at < task.start - CLOCK_SKEW:
        return f"{where} was requeued: it started again after the study was claimed"
    return None


def lost_class(attempt: Any, report: JobReport | None) -> str:
    """worker.timeout when Slurm ended the task at its time limit, else worker.lost."""
    key = _attempt_key(attempt.worker)
    task = report.tasks.get(key[1]) if key and report else None
    return "worker.timeout" if task is not None and task.state in ("TIMEOUT", "DEADLINE") else "worker.lost"


# -- sync and cancel ---------------------------------------------------------------------------

def _job_summary(submission: Mapping[str, Any] | None, report: JobReport) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for task in report.tasks.values():
        counts[task.state] = counts.get(task.state, 0) + 1
    return {
        "job_id": report.job_id,
        "array_spec": (submission or {}).get("array_spec"),
        "submitted_at": (submission or {}).get("submitted_at"),
        "source": report.source,
        "task_states": dict(sorted(counts.items())),
        "tasks": {("" if t is None else t): s.state
                  for t, s in sorted(report.tasks.items(), key=lambda kv: int(kv[0] or -1))},
    }


def _ask(ledger: Any, running: Sequence[Any]) -> tuple[list[dict[str, Any]], dict[str, JobReport]]:
    submissions = ledger.submissions()
    ids = [str(s["job_id"]) for s in submissions]
    ids += [key[0] for key in (_attempt_key(a.worker) for a in running) if key]
    since = min((s["submitted_at"] for s in submissions if s.get("submitted_at")), default=None)
    return submissions, query_jobs(ids, since)


def sync(config: Config, ledger: Any) -> SyncResult:
    """Mark lost every running study whose Slurm task is gone; report each array job's task states."""
    running = ledger.running()
    submissions, reports = _ask(ledger, running)
    lost = []
    for attempt in running:
        key = _attempt_key(attempt.worker)
        report = reports.get(key[0]) if key else None
        reason = lost_reason(attempt, report)
        if reason and ledger.mark_lost(attempt.study_id, attempt.token, reason, lost_class(attempt, report)):
            lost.append(attempt.study_id)
    jobs = [_job_summary(s, reports[str(s["job_id"])]) for s in submissions if str(s["job_id"]) in reports]
    return SyncResult(jobs, lost)


def reclaim_after_requeue(ledger: Any, me: Any) -> list[str]:
    """Studies an earlier run of this requeued task still holds: mark them lost now.

    A requeued task starts again under the same (array job, task) with a higher
    SLURM_RESTART_COUNT, so whatever an earlier restart of it shows running belongs to
    processes Slurm has killed (a worker that could not release in time). Without this, such a
    study would wait for its lease or for the next `sync`. Returns the study ids marked lost.
    """
    mine = _attempt_key(me)
    if mine is None or not getattr(me, "slurm_restart_count", None):
        return []
    label = f"{mine[0]}_{mine[1]}" if mine[1] is not None else mine[0]
    lost = []
    for attempt in ledger.running():
        earlier = getattr(attempt.worker, "slurm_restart_count", None)
        if _attempt_key(attempt.worker) != mine or earlier is None or earlier >= me.slurm_restart_count:
            continue
        reason = (f"slurm task {label} was requeued: its restart {earlier} held the study and is gone, "
                  f"restart {me.slurm_restart_count} runs now")
        if ledger.mark_lost(attempt.study_id, attempt.token, reason, "worker.lost"):
            lost.append(attempt.study_id)
    return lost


def cancel(config: Config, ledger: Any, *, wait_seconds: float = 60.0) -> list[str]:
    """scancel the project's unfinished arrays; returns the studies they held, now back to pending.

    Workers release their study on the SIGTERM that scancel sends. Whatever is still shown
    running on those jobs once they are gone (a worker killed hard) is released here, without
    charging an attempt: the user stopped it, the study did nothing wrong.
    """
    from ...ledger import Claim

    submissions = ledger.submissions()
    reports = query_jobs([str(s["job_id"]) for s in submissions])
    active = [j for j, r in reports.items()
              if any(t.state not in ENDED_STATES for t in r.tasks.values())]
    if not active:
        return []
    held = [a for a in ledger.running() if (_attempt_key(a.worker) or ("",))[0] in active]
    out = run_slurm(["scancel", *active])
    if out.returncode != 0:
        raise SlurmError(f"scancel failed: {one_line(out.stderr or out.stdout)}")
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        reports = query_jobs(active)
        if all(t.state in ENDED_STATES for r in reports.values() for t in r.tasks.values()):
            break
        time.sleep(1.0)
    for attempt in held:
        claim = Claim(attempt.study_id, attempt.token, attempt.attempt, None, None, attempt.claimed_at,
                      attempt.worker)
        ledger.release(claim, "batchseg cancel: its Slurm job was cancelled")
    return [a.study_id for a in held if (ledger.study(a.study_id) or {}).get("state") == "pending"]
