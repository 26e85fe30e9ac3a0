"""Slurm: render the array job script, submit it, reconcile the ledger with what Slurm says.

A submission is one or more job arrays whose tasks all run the same worker loop as
`batchseg run` (`python -m batchseg work --project P`): tasks are interchangeable
workers that claim studies from the ledger, so the array size is a number of
workers, not a number of studies.

Reconciliation asks Slurm about all the project's array jobs in one `squeue` call
(it alone reports requeue restart counts, and it still knows jobs that ended less than
MinJobAge ago) and, for jobs squeue no longer knows, one `sacct` call when accounting
is enabled. Ledger attempts are matched to Slurm tasks on
(SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID): SLURM_JOB_ID alone is ambiguous because the
last task to start reuses the array's own job id.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import re
import shlex
import site
import statistics
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..config import Config, SlurmConfig
from ..errors import one_line
from .local import worker_command

DEFAULT_MAX_ARRAY_SIZE = 1001        # Slurm's default MaxArraySize
DEFAULT_TASK_CAP = 64                # tasks when nothing throttles and no durations are known
COMMAND_TIMEOUT = 60                 # seconds for one Slurm client call
CONTAINER_PYTHON = "python3"         # the image's interpreter: present in pytorch, conda, Debian, Ubuntu images
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


class SlurmError(RuntimeError):
    """Slurm refused or could not be asked, or a value cannot be put safely into a job script."""


@dataclass
class SubmitResult:
    job_ids: list[str]
    array_specs: list[str]
    script: str                      # the first array's script (all of them are in `scripts`)
    dry_run: bool
    tasks: int
    scripts: list[str] = field(default_factory=list)


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


# -- values that reach the job script ----------------------------------------------------------

def check_value(value: Any, what: str) -> str:
    """`value` as text, refused when it holds a character no job script line can carry."""
    text = str(value)
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise SlurmError(f"{what} {text!r} contains a control character ({ch!r}: newline, tab, NUL, ...); "
                             "it cannot be put into a job script")
    return text


def shell_quote(value: Any, what: str) -> str:
    """One shell word that bash reads back as exactly `value`."""
    return shlex.quote(check_value(value, what))


_SBATCH_PLAIN = re.compile(r"[^\s'\"#\\]+")


def sbatch_quote(value: Any, what: str) -> str:
    """One token of an #SBATCH line that sbatch reads back as exactly `value`.

    sbatch (22.05, checked) splits #SBATCH lines at blanks, strips ' and " quotes, takes a
    backslash as an escape and an unquoted # as the start of a comment. Inside double
    quotes only \\ and \" need escaping. Nothing there is ever run by a shell.
    """
    text = check_value(value, what)
    if text and _SBATCH_PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _option_groups(args: Sequence[str], what: str) -> list[list[str]]:
    """Split ['--mail-user', 'me@x', '--exclusive'] into one group per option."""
    groups: list[list[str]] = []
    for arg in args:
        text = check_value(arg, what)
        if text.startswith("-"):
            name = text.split("=", 1)[0]
            if name in ("--array", "-a", "--wrap") or (name.startswith("-a") and not name.startswith("--")):
                raise SlurmError(f"{what}: {text!r}: batchseg sets --array itself (use --tasks and --max-parallel)")
            groups.append([text])
        elif groups:
            groups[-1].append(text)
        else:
            raise SlurmError(f"{what}: {text!r} is not an option (it must start with '-')")
    return groups


# -- the effective settings --------------------------------------------------------------------

_INT_FIELDS = {"cpus_per_task": 1, "max_parallel": 0, "signal_grace": 0}


def effective_slurm(config: Config, overrides: Mapping[str, Any] | None = None) -> SlurmConfig:
    """config.slurm with command-line overrides applied (None means: keep the config's value)."""
    known = {f.name for f in dataclasses.fields(SlurmConfig)}
    changes: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in known:
            raise SlurmError(f"unknown Slurm setting {key!r}; known: {', '.join(sorted(known))}")
        changes[key] = value
    slurm = dataclasses.replace(config.slurm, **changes)
    for key, lowest in _INT_FIELDS.items():
        value = getattr(slurm, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise SlurmError(f"slurm.{key} must be a whole number >= {lowest}, not {value!r}")
    if slurm.signal_grace > 65535:
        raise SlurmError(f"slurm.signal_grace {slurm.signal_grace} is above Slurm's limit of 65535 seconds")
    if isinstance(slurm.extra_args, str) or not isinstance(slurm.extra_args, (list, tuple)):
        raise SlurmError(f"slurm.extra_args must be a list of strings, not {slurm.extra_args!r}")
    return slurm


def _job_name(config: Config) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", config.project_dir.name)[:48]
    return f"batchseg-{name}" if name else "batchseg"


def sbatch_directives(config: Config, slurm: SlurmConfig, array_spec: str,
                      sbatch_args: Sequence[str] = ()) -> list[str]:
    """The #SBATCH lines; sbatch_args (the command line's) come last, so they win over the config."""
    logs = config.logs_dir.resolve()
    if "%" in str(logs):
        raise SlurmError(f"the logs folder {logs} contains '%', which Slurm would read as a file name pattern")
    options: list[tuple[str, Any]] = [
        ("--job-name", _job_name(config)),
        ("--array", array_spec),
        ("--output", f"{logs}/%A_%a.out"),
        ("--open-mode", "append"),
    ]
    lines = [f"#SBATCH {name}={sbatch_quote(value, name)}" for name, value in options]
    lines.append("#SBATCH --requeue")
    if slurm.signal_grace > 0:
        lines.append(f"#SBATCH --signal=B:USR1@{slurm.signal_grace}")
    settings = [("--partition", slurm.partition), ("--account", slurm.account), ("--qos", slurm.qos),
                ("--time", slurm.time), ("--mem", slurm.mem), ("--cpus-per-task", slurm.cpus_per_task),
                ("--gres", slurm.gres), ("--constraint", slurm.constraint)]
    for name, value in settings:
        if value not in ("", None):
            lines.append(f"#SBATCH {name}={sbatch_quote(value, f'slurm {name[2:]}')}")
    for where, args in (("slurm.extra_args", slurm.extra_args), ("sbatch argument", sbatch_args)):
        for group in _option_groups(list(args), where):
            lines.append("#SBATCH " + " ".join(sbatch_quote(a, where) for a in group))
    return lines


# -- the command the task runs -----------------------------------------------------------------

def _source_root() -> Path | None:
    """The folder holding the batchseg package when it is not an installed one (a source checkout)."""
    import batchseg

    root = Path(batchseg.__file__).resolve().parent.parent
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()] if p}
    return None if root in installed else root


def container_argv(config: Config, slurm: SlurmConfig) -> list[str]:
    """`apptainer exec [options] --bind ... IMAGE`, or [] without a container.

    The project, dataset, output and models folders are bound at their own paths, so every
    absolute path in the project file means the same inside the container.
    """
    box = config.container
    if box.runtime in ("", "none"):
        return []
    # config.validate() refuses these too, but a Config built in code (the tests', a library
    # user's) reaches here unvalidated, and a wrong runtime must not become a job script.
    if box.runtime not in ("apptainer", "singularity"):
        raise SlurmError(f"container.runtime must be none, apptainer or singularity, not {box.runtime!r}")
    if not box.image:
        raise SlurmError("container.image is required when container.runtime is set")
    options = list(box.options) if box.options else (["--nv"] if "gpu" in (slurm.gres or "") else [])
    binds: list[str] = []
    for folder in (config.project_dir, config.dataset_dir, config.out_dir, config.models_path):
        if folder is None:
            continue
        path = str(Path(folder).resolve())
        if "," in path or ":" in path:
            raise SlurmError(f"cannot bind {path} into the container: ',' and ':' separate bind specifications")
        if path not in binds:
            binds.append(path)
    for spec in box.binds:
        text = check_value(spec, "container bind")
        if "," in text:
            raise SlurmError(f"container bind {text!r} contains ',': give each bind as its own list item")
        if text not in binds:
            binds.append(text)
    return [box.runtime, "exec", *options, "--bind", ",".join(binds), box.image]


def task_command(config: Config, slurm: SlurmConfig) -> list[str]:
    """argv of the task: the submitting interpreter itself, or the container's python3."""
    prefix = container_argv(config, slurm)
    python = CONTAINER_PYTHON if prefix else os.path.abspath(sys.executable)
    return prefix + worker_command(config, python=python)


# -- rendering ---------------------------------------------------------------------------------

_ARRAY_SPEC = re.compile(r"\d+(-\d+(:\d+)?)?(,\d+(-\d+(:\d+)?)?)*(%\d+)?")


def load_template(name: str = "task.sbatch") -> str:
    try:
        from importlib.resources import files

        return files("batchseg.arrays").joinpath(name).read_text()
    except ModuleNotFoundError:
        # A source checkout that was never installed: arrays/ sits beside the package.
        import batchseg

        return (Path(batchseg.__file__).resolve().parent.parent / "arrays" / name).read_text()


def fill_template(template: str, values: Mapping[str, str]) -> str:
    names = set(re.findall(r"\{\{([A-Z_]+)\}\}", template))
    if names != set(values):
        raise SlurmError(f"template placeholders {sorted(names)} do not match the values {sorted(values)}")
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], template)


def render_script(config: Config, *, tasks: int, array_spec: str, overrides: dict | None = None,
                  sbatch_args: Sequence[str] = ()) -> str:
    """The array job script for `array_spec`; raises SlurmError for a value it cannot make safe."""
    if not _ARRAY_SPEC.fullmatch(array_spec):
        raise SlurmError(f"bad array specification {array_spec!r}")
    slurm = effective_slurm(config, overrides)
    environment = []
    root = _source_root()
    if root is not None and not container_argv(config, slurm):
        # Not installed (a source checkout): let the task import the same batchseg.
        environment.append(f"export PYTHONPATH={shell_quote(str(root), 'source folder')}${{PYTHONPATH:+:$PYTHONPATH}}")
    values = {
        "SBATCH": "\n".join(sbatch_directives(config, slurm, array_spec, sbatch_args)),
        "TASKS": str(int(tasks)),
        "ARRAY_SPEC": array_spec,
        "ENVIRONMENT": "\n".join(environment),
        "PROJECT_DIR": shell_quote(str(config.project_dir.resolve()), "project folder"),
        "COMMAND": " ".join(shell_quote(a, "task command argument") for a in task_command(config, slurm)),
    }
    return fill_template(load_template(), values)


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


# -- talking to Slurm --------------------------------------------------------------------------

def _run(argv: Sequence[str], *, input: str | None = None, cwd: Path | None = None,
         timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(argv), input=input, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: is Slurm installed here (or its module loaded)?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {timeout:.0f} s") from None


def max_array_size() -> int:
    """MaxArraySize from `scontrol show config`; Slurm's default 1001 when it cannot be read."""
    try:
        out = _run(["scontrol", "show", "config"], timeout=20)
    except SlurmError:
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(match.group(1)) if out.returncode == 0 and match else DEFAULT_MAX_ARRAY_SIZE


def parse_timestamp(text: str) -> float | None:
    """Slurm's local-time timestamps (2024-05-01T12:34:56) as epoch seconds; None for N/A, Unknown, NONE."""
    text = (text or "").strip()
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def allocation_deadline(environ: Mapping[str, str] | None = None) -> float | None:
    """Epoch seconds at which this Slurm job's time limit ends; None outside Slurm or unknown. Never raises."""
    env = os.environ if environ is None else environ
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return None
    try:
        out = _run(["squeue", "-h", "-j", job_id, "-o", "%e"], timeout=20)
        if out.returncode == 0:
            end = parse_timestamp(out.stdout.strip().splitlines()[0] if out.stdout.strip() else "")
            if end is not None:
                return end
        out = _run(["scontrol", "show", "job", job_id], timeout=20)
        match = re.search(r"\bEndTime=(\S+)", out.stdout)
        return parse_timestamp(match.group(1)) if out.returncode == 0 and match else None
    except Exception:  # the worker must run on even when Slurm cannot be asked
        return None


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
    pending = int(ledger.summary()["states"].get("pending", 0))
    if tasks is None:
        tasks = default_tasks(pending, max_parallel=slurm.max_parallel, time_limit=slurm.time,
                              signal_grace=slurm.signal_grace, study_seconds=ledger.study_seconds())
    if tasks < 0:
        raise SlurmError(f"tasks must not be negative, not {tasks}")
    specs = plan_arrays(tasks, max_array_size(), slurm.max_parallel)
    scripts = [render_script(config, tasks=tasks, array_spec=spec, overrides=overrides, sbatch_args=sbatch_args)
               for spec in specs]
    result = SubmitResult([], specs, scripts[0] if scripts else "", dry_run, tasks, scripts)
    if dry_run or not specs:
        return result
    config.logs_dir.resolve().mkdir(parents=True, exist_ok=True)   # Slurm does not create it
    for spec, script in zip(specs, scripts):
        argv = ["sbatch", "--parsable"]
        if result.job_ids and slurm.max_parallel > 0:
            argv.append(f"--dependency=afterany:{result.job_ids[-1]}")
        out = _run(argv, input=script, cwd=config.project_dir)
        job_id = out.stdout.strip().split(";")[0]
        if out.returncode != 0 or not job_id.isdigit():
            done = f" (already submitted: {', '.join(result.job_ids)})" if result.job_ids else ""
            raise SlurmError(f"sbatch refused --array={spec}: {one_line(out.stderr or out.stdout)}{done}")
        ledger.record_submission(job_id, spec, script, pending, tasks, kind="array")
        result.job_ids.append(job_id)
    return result


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
    out = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-O", fmt])
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
        out = _run(argv)
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


def cancel(config: Config, ledger: Any, *, wait_seconds: float = 60.0) -> list[str]:
    """scancel the project's unfinished arrays; returns the studies they held, now back to pending.

    Workers release their study on the SIGTERM that scancel sends. Whatever is still shown
    running on those jobs once they are gone (a worker killed hard) is released here, without
    charging an attempt: the user stopped it, the study did nothing wrong.
    """
    from ..ledger import Claim

    submissions = ledger.submissions()
    reports = query_jobs([str(s["job_id"]) for s in submissions])
    active = [j for j, r in reports.items()
              if any(t.state not in ENDED_STATES for t in r.tasks.values())]
    if not active:
        return []
    held = [a for a in ledger.running() if (_attempt_key(a.worker) or ("",))[0] in active]
    out = _run(["scancel", *active])
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
