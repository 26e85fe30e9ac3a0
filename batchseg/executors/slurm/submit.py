"""Submitting: how many array tasks the pending work deserves, the arrays under MaxArraySize, sbatch, records.

A submission is one or more job arrays whose tasks all run the same worker loop as
`batchseg run`: tasks are interchangeable workers that claim studies from the ledger, so
the array size is a number of workers, not a number of studies.
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from ...config import Config, SlurmConfig
from ...errors import one_line
from ...placement import best_share, gpus_in_gres, predict_gpu_share, split_study_seconds
from .client import SlurmError, run_slurm
from .job_script import effective_slurm, render_script

DEFAULT_MAX_ARRAY_SIZE = 1001        # Slurm's default MaxArraySize
DEFAULT_TASK_CAP = 64                # tasks when nothing throttles and no durations are known


@dataclass
class SubmitResult:
    job_ids: list[str]
    array_specs: list[str]
    script: str                      # the first array's script (all of them are in `scripts`)
    dry_run: bool
    tasks: int
    scripts: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)   # lines for people: how the tasks use their GPUs


# -- sizing ------------------------------------------------------------------------------------

def parse_duration(text: str) -> float | None:
    """Slurm's time format (min, min:sec, h:min:sec, d-h, d-h:min, d-h:min:sec) in seconds; None if unlimited."""
    text = (text or "").strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A"):
        return None
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        days = int(head)
        parts = [int(p) for p in text.split(":")]
        parts += [0] * (3 - len(parts))          # d-h, d-h:m, d-h:m:s
        hours, minutes, seconds = parts
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, (minutes, seconds) = 0, parts
        else:
            hours, minutes, seconds = parts
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def default_tasks(pending: int, *, max_parallel: int, time_limit: str, signal_grace: int,
                  study_seconds: Sequence[float] = ()) -> int:
    """How many array tasks the pending work deserves.

    Enough tasks to use the allowed parallelism (without a throttle at most DEFAULT_TASK_CAP,
    with one twice the throttle, so a task that ends early has a successor waiting); when
    study durations are known, also enough that the work fits in the tasks' time limits.
    """
    if pending <= 0:
        return 0
    parallel = max_parallel if max_parallel > 0 else DEFAULT_TASK_CAP
    wanted = min(pending, 2 * max_parallel if max_parallel > 0 else DEFAULT_TASK_CAP)
    try:
        limit = parse_duration(time_limit)
    except ValueError:
        limit = None
    if study_seconds and limit:
        # 80 %: model loading and the last study that no longer fits
        usable = max(limit - signal_grace, 60.0) * 0.8
        per_task = max(1, int(usable // max(statistics.median(study_seconds), 1e-3)))
        wanted = min(pending, max(math.ceil(pending / per_task), min(pending, parallel)))
    return wanted


def plan_arrays(tasks: int, max_size: int, max_parallel: int = 0) -> list[str]:
    """Array specifications for `tasks` tasks: each array's indices are 0..k-1 with k <= MaxArraySize."""
    if tasks <= 0:
        return []
    max_size = max(1, max_size)
    specs = []
    left = tasks
    while left > 0:
        k = min(left, max_size)
        spec = f"0-{k - 1}" if k > 1 else "0"
        if 0 < max_parallel < k:
            spec += f"%{max_parallel}"
        specs.append(spec)
        left -= k
    return specs


def max_array_size() -> int:
    """MaxArraySize from `scontrol show config`; Slurm's default 1001 when it cannot be read."""
    try:
        out = run_slurm(["scontrol", "show", "config"], timeout=20)
    except SlurmError:
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(match.group(1)) if out.returncode == 0 and match else DEFAULT_MAX_ARRAY_SIZE


# -- submitting --------------------------------------------------------------------------------

def submit_array(config: Config, ledger: Any, *, tasks: int | None = None, max_parallel: int | None = None,
                 dry_run: bool = False, sbatch_args: Sequence[str] = (),
                 overrides: dict | None = None) -> SubmitResult:
    """Submit array job(s) of workers for the pending studies; records each in the ledger.

    More tasks than MaxArraySize become several arrays, each indexed from 0. With a
    throttle, each array waits for the previous one (afterany), so at most `max_parallel`
    tasks run at any time. With nothing pending (and no --tasks) nothing is submitted.
    """
    overrides = dict(overrides or {})
    if max_parallel is not None:
        overrides["max_parallel"] = max_parallel
    slurm = effective_slurm(config, overrides)
    pending = ledger.states()["pending"]
    if tasks is None:
        tasks = default_tasks(pending, max_parallel=slurm.max_parallel, time_limit=slurm.time,
                              signal_grace=slurm.signal_grace, study_seconds=ledger.study_seconds())
    if tasks < 0:
        raise SlurmError(f"tasks must not be negative, not {tasks}")
    specs = plan_arrays(tasks, max_array_size(), slurm.max_parallel)
    scripts = [render_script(config, tasks=tasks, array_spec=spec, overrides=overrides, sbatch_args=sbatch_args)
               for spec in specs]
    result = SubmitResult([], specs, scripts[0] if scripts else "", dry_run, tasks, scripts,
                          gpu_advice(slurm, ledger) if specs else [])
    if dry_run or not specs:
        return result
    config.logs_dir.resolve().mkdir(parents=True, exist_ok=True)   # Slurm does not create it
    for spec, script in zip(specs, scripts):
        argv = ["sbatch", "--parsable"]
        if result.job_ids and slurm.max_parallel > 0:
            argv.append(f"--dependency=afterany:{result.job_ids[-1]}")
        out = run_slurm(argv, input=script, cwd=config.project_dir)
        job_id = out.stdout.strip().split(";")[0]
        if out.returncode != 0 or not job_id.isdigit():
            done = f" (already submitted: {', '.join(result.job_ids)})" if result.job_ids else ""
            raise SlurmError(f"sbatch refused --array={spec}: {one_line(out.stderr or out.stdout)}{done}")
        ledger.record_submission(job_id, spec, script, pending, tasks, kind="array")
        result.job_ids.append(job_id)
    return result


# -- workers per GPU ---------------------------------------------------------------------------

def gpu_advice(slurm: SlurmConfig, ledger: Any, last: int = 200) -> list[str]:
    """How each task will use its GPUs, and how many workers per GPU this project's timings support.

    The timings are the project's own (its last `last` done studies that timed their networks,
    segment.net_*); the busy fraction and the suggestion are derived from them
    (placement.predict_gpu_share), never measured here.
    """
    gpus = gpus_in_gres(slurm.gres)
    if gpus == 0:
        return []
    workers = slurm.workers_per_task
    threads = max(1, slurm.cpus_per_task // workers)
    lines = [f"each task: {workers} worker(s) over {gpus} GPU(s), {threads} CPU thread(s) per worker"]
    splits = [split for split in (split_study_seconds(row["timings"] or {}) for row in ledger.recently_done(last))
              if split is not None]
    if not splits:
        if workers <= gpus:
            lines.append("one worker per GPU leaves it idle while the worker runs its CPU stages; once studies of "
                         "this project are done, submit suggests --workers-per-task from their timings "
                         "(README: Keeping the GPU busy)")
        return lines
    cpu = statistics.median(c for c, _ in splits)
    gpu = statistics.median(g for _, g in splits)
    best = best_share(predict_gpu_share(cpu, gpu))
    now = min(1.0, workers / gpus * gpu / (cpu + gpu)) if cpu + gpu > 0 else 0.0
    lines.append(f"this project's done studies (median of {len(splits)}): {cpu:.1f} s CPU work and {gpu:.1f} s "
                 f"in the networks; derived: {best.workers_per_gpu} worker(s) per GPU keep a GPU "
                 f"~{best.busy_fraction:.0%} busy, this submission's {workers / gpus:g} ~{now:.0%}")
    wanted = best.workers_per_gpu * gpus
    if wanted != workers:
        lines.append(f"suggest: --workers-per-task {wanted} --cpus-per-task {wanted * threads} "
                     f"({threads} CPU thread(s) per worker, as now)")
    lines.append("GPU memory: `batchseg models check` prints what one worker needed so far")
    return lines
