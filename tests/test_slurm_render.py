"""The Slurm executor without a Slurm: rendering, quoting, sizing, parsing squeue/sacct output.

The rendered scripts are checked by bash itself (bash -n, and running them with a stub
interpreter that records its argv), not by reading the text back with Python's own rules.
The #SBATCH side of the quoting is checked against the real sbatch in tests/slurm.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchseg.config import Config, load_config, write_config
from batchseg.executors import slurm
from batchseg.executors.slurm import (
    JobReport,
    SlurmError,
    TaskState,
    allocation_deadline,
    default_tasks,
    lost_class,
    lost_reason,
    parse_duration,
    parse_sacct,
    parse_squeue,
    plan_arrays,
    render_script,
    sbatch_quote,
)
from batchseg.ledger import WorkerInfo

HOSTILE = "we'ird \"dir\" $(touch PWNED) `touch PWNED2`; x & y | z > w * ? ~ ! # \\ {a,b} %s"


def make_config(tmp_path: Path, name: str = "proj", **slurm_values) -> Config:
    project = tmp_path / name
    project.mkdir(parents=True, exist_ok=True)
    config = Config(project_dir=project, dataset=str(tmp_path / "data"))
    for key, value in slurm_values.items():
        setattr(config.slurm, key, value)
    return config


def sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def exec_line(script: str) -> str:
    (line,) = [line for line in script.splitlines() if line.startswith("exec ")]
    return line


def write_stub(path: Path) -> Path:
    """An executable that writes its argv (as JSON) to $ARGV_OUT, its $BATCHSEG_DB beside it, and exits 0."""
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "open(os.environ['ARGV_OUT'], 'w').write(json.dumps(sys.argv[1:]))\n"
                    "open(os.environ['ARGV_OUT'] + '.db', 'w').write(os.environ.get('BATCHSEG_DB', ''))\n")
    path.chmod(0o755)
    return path


def run_script(script: str, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run the rendered job script with bash, as slurmd would; returns the argv the command got."""
    path = tmp_path / "job.sh"
    path.write_text(script)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    out = tmp_path / "argv.json"
    result = subprocess.run(["bash", str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                            env={**os.environ, "ARGV_OUT": str(out), **(env or {})})
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


# -- the template and its defaults ---------------------------------------------------------------

def test_template_ships_with_the_package() -> None:
    text = slurm.load_template()
    assert text.startswith("#!/bin/bash\n")
    for name in ("SBATCH", "TASKS", "ARRAY_SPEC", "ENVIRONMENT", "PROJECT_DIR", "COMMAND"):
        assert "{{" + name + "}}" in text
    # every #SBATCH line must come before the first command, or sbatch ignores it
    assert text.index("{{SBATCH}}") < text.index("\nset -u")


def test_default_render(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    script = render_script(config, tasks=4, array_spec="0-3%2")
    lines = sbatch_lines(script)
    logs = config.logs_dir.resolve()
    assert "#SBATCH --array=0-3%2" in lines
    assert f"#SBATCH --output={logs}/%A_%a.out" in lines
    assert "#SBATCH --open-mode=append" in lines
    assert "#SBATCH --requeue" in lines
    assert "#SBATCH --signal=B:USR1@120" in lines
    assert "#SBATCH --time=04:00:00" in lines
    assert "#SBATCH --mem=32G" in lines
    assert "#SBATCH --cpus-per-task=4" in lines
    assert "#SBATCH --gres=gpu:1" in lines
    assert not any(l.startswith(("#SBATCH --partition", "#SBATCH --account", "#SBATCH --qos",
                                 "#SBATCH --constraint")) for l in lines)
    project = str(config.project_dir.resolve())
    assert exec_line(script) == f"exec {os.path.abspath(sys.executable)} -m batchseg work --project {project}"
    assert os.path.isabs(os.path.abspath(sys.executable))


def test_config_values_and_overrides(tmp_path: Path) -> None:
    config = make_config(tmp_path, partition="gpu", account="proj42", qos="long", constraint="a100|h100",
                         extra_args=["--mail-type=END", "--mail-user", "me@example.org", "--exclusive"],
                         signal_grace=300)
    config.db = "postgresql+psycopg://u@db.example.org:5432/ledger"
    script = render_script(config, tasks=2, array_spec="0-1",
                           overrides={"time": "1", "gres": "", "mem": "2G", "cpus_per_task": 2, "qos": None},
                           sbatch_args=["--comment=from the command line", "--nice=10"])
    lines = sbatch_lines(script)
    for expected in ("--partition=gpu", "--account=proj42", "--qos=long", "--constraint=a100|h100",
                     "--time=1", "--mem=2G", "--cpus-per-task=2", "--signal=B:USR1@300",
                     "--mail-type=END", "--mail-user me@example.org", "--exclusive",
                     '"--comment=from the command line"', "--nice=10"):
        assert f"#SBATCH {expected}" in lines, expected
    assert not any("--gres" in l for l in lines)
    # command-line arguments come last: later #SBATCH lines win in sbatch
    assert lines[-1] == "#SBATCH --nice=10"
    assert "export BATCHSEG_DB=postgresql+psycopg://u@db.example.org:5432/ledger" in script.splitlines()


def test_no_signal_line_without_grace(tmp_path: Path) -> None:
    script = render_script(make_config(tmp_path, signal_grace=0), tasks=1, array_spec="0")
    assert not any("--signal" in l for l in sbatch_lines(script))


@pytest.mark.parametrize("overrides, message", [
    ({"walltime": "1"}, "unknown Slurm setting"),
    ({"cpus_per_task": 0}, "cpus_per_task"),
    ({"max_parallel": -1}, "max_parallel"),
    ({"signal_grace": 70000}, "65535"),
    ({"extra_args": "--exclusive"}, "list"),
    ({"workers_per_task": 0}, "workers_per_task"),
])
def test_bad_settings_are_refused(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(SlurmError, match=message):
        render_script(make_config(tmp_path), tasks=1, array_spec="0", overrides=overrides)


@pytest.mark.parametrize("args, message", [
    (["--array=0-9"], "--array"),
    (["-a", "0-3"], "--array"),
    (["--wrap=true"], "--wrap"),
    (["--arr=0-999"], "reads it as --array"),
    (["-Ha0-999"], "reads it as --array"),
    (["--wra="], "reads it as --wrap"),
    (["exclusive"], "not an option"),
])
def test_bad_sbatch_args_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(SlurmError, match=message):
        render_script(make_config(tmp_path), tasks=1, array_spec="0", sbatch_args=args)


def test_a_db_override_reaches_the_task_without_its_password(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_config(config)
    config.db = "postgresql+psycopg://lab:s3cret@db.example:5432/ledger"   # a --db override
    script = render_script(config, tasks=1, array_spec="0")
    assert "s3cret" not in script
    assert "export BATCHSEG_DB=postgresql+psycopg://lab@db.example:5432/ledger" in script.splitlines()
    assert "export PYTHONSAFEPATH=1" in script.splitlines()
    assert "--db" not in exec_line(script)
    group = render_script(config, tasks=1, array_spec="0", overrides={"workers_per_task": 3})
    assert "s3cret" not in group, "a worker group's task carries no password either"
    assert exec_line(group).endswith(" --workers 3") and "--db" not in exec_line(group)


@pytest.mark.parametrize("spec", ["0-3; rm -rf /", "", "0-3%", "1001-2000%a", "0-3\n"])
def test_bad_array_spec_is_refused(tmp_path: Path, spec: str) -> None:
    with pytest.raises(SlurmError, match="array specification"):
        render_script(make_config(tmp_path), tasks=1, array_spec=spec)


# -- quoting -------------------------------------------------------------------------------------

def test_hostile_project_folder_reaches_argv_literally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quotes, $(...), backticks, ;, &, |, globs, #, backslash, braces in every shell-side value."""
    stub = write_stub(tmp_path / "python-stub")
    monkeypatch.setattr(sys, "executable", str(stub))
    config = make_config(tmp_path, name=HOSTILE.replace("%", "pct"))
    config.db = "sqlite:///" + str(tmp_path / HOSTILE.replace("%", "pct") / "led'ger $(x).sqlite")
    script = render_script(config, tasks=1, array_spec="0")
    argv = run_script(script, tmp_path)
    assert argv == ["-m", "batchseg", "work", "--project", str(config.project_dir.resolve())]
    assert (tmp_path / "argv.json.db").read_text() == config.db, "the --db override, through the environment"
    assert not list(tmp_path.rglob("PWNED*")), "a command substitution ran"


def test_hostile_container_values_reach_argv_literally(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_stub(bin_dir / "apptainer")
    config = make_config(tmp_path, name="p $(touch PWNED)")
    config.container.runtime = "apptainer"
    config.container.image = str(tmp_path / "img `touch PWNED2`; 'x'.sif")
    config.container.binds = ["/scratch/$(touch PWNED3):/scratch", "/models dir:/models:ro"]
    config.container.options = ["--env", "NOTE=a \"b\" $c", "--nv"]
    script = render_script(config, tasks=1, array_spec="0")
    argv = run_script(script, tmp_path, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    project = str(config.project_dir.resolve())
    binds = ",".join([project, str((tmp_path / "data").resolve()), str(config.out_dir.resolve()),
                      "/scratch/$(touch PWNED3):/scratch", "/models dir:/models:ro"])
    assert argv == ["exec", "--env", "NOTE=a \"b\" $c", "--nv", "--bind", binds, config.container.image,
                    "python3", "-m", "batchseg", "work", "--project", project]
    assert not list(tmp_path.rglob("PWNED*"))


def test_container_defaults(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.container.runtime = "singularity"
    config.container.image = "/img/s.sif"
    config.models_dir = str(tmp_path / "weights")
    line = exec_line(render_script(config, tasks=1, array_spec="0"))
    project = config.project_dir.resolve()
    assert line == (f"exec singularity exec --nv --bind {project},{(tmp_path / 'data').resolve()},"
                    f"{project}/results,{(tmp_path / 'weights').resolve()} /img/s.sif "
                    f"python3 -m batchseg work --project {project}")
    # no GPU asked for: no --nv
    line = exec_line(render_script(config, tasks=1, array_spec="0", overrides={"gres": ""}))
    assert line.startswith("exec singularity exec --bind ")
    assert "PYTHONPATH" not in render_script(config, tasks=1, array_spec="0")


@pytest.mark.parametrize("field, value", [
    ("partition", "gpu\n#SBATCH --account=someone-else"),
    ("account", "a\rb"),
    ("qos", "a\x00b"),
    ("constraint", "a\tb"),
    ("time", "1\u2028"),
])
def test_control_characters_are_refused(tmp_path: Path, field: str, value: str) -> None:
    config = make_config(tmp_path, **{field: value})
    with pytest.raises(SlurmError, match="control character"):
        render_script(config, tasks=1, array_spec="0")


def test_refusals_in_the_shell_part(tmp_path: Path) -> None:
    config = make_config(tmp_path, name="new\nline")
    with pytest.raises(SlurmError, match="control character"):
        render_script(config, tasks=1, array_spec="0")
    config = make_config(tmp_path, name="100%")
    with pytest.raises(SlurmError, match="'%'"):
        render_script(config, tasks=1, array_spec="0")
    config = make_config(tmp_path)
    config.container.runtime, config.container.image = "apptainer", "/i.sif"
    config.container.binds = ["/a,/b"]
    with pytest.raises(SlurmError, match="','"):
        render_script(config, tasks=1, array_spec="0")
    config = make_config(tmp_path, name="a,b")
    config.container.runtime, config.container.image = "apptainer", "/i.sif"
    with pytest.raises(SlurmError, match="cannot bind"):
        render_script(config, tasks=1, array_spec="0")


@pytest.mark.parametrize("value, token", [
    ("gpu:1", "gpu:1"),
    ("a|b&c[d]*(e)!", "a|b&c[d]*(e)!"),
    ("$(id)`x`;y", "$(id)`x`;y"),          # nothing in an #SBATCH line is run by a shell
    ("a b", '"a b"'),
    ("a#b", '"a#b"'),                      # unquoted, sbatch would cut the line at #
    ("it's", '"it\'s"'),
    ('say "x"', '"say \\"x\\""'),
    ("a\\b", '"a\\\\b"'),                  # unquoted, sbatch would eat the backslash
    ("", '""'),
])
def test_sbatch_quote(value: str, token: str) -> None:
    assert sbatch_quote(value, "test") == token


def test_hostile_logs_folder_in_sbatch_line(tmp_path: Path) -> None:
    config = make_config(tmp_path, name="a \"b\" #c 'd'")
    lines = sbatch_lines(render_script(config, tasks=1, array_spec="0"))
    logs = str(config.logs_dir.resolve()).replace("\\", "\\\\").replace('"', '\\"')
    assert f'#SBATCH --output="{logs}/%A_%a.out"' in lines


def test_dry_run_submits_nothing(tmp_path: Path) -> None:
    from batchseg.ledger import Ledger, StudyRow

    config = make_config(tmp_path)
    write_config(config)
    ledger = Ledger(config.db_url)
    ledger.add_studies([StudyRow(str(i)) for i in range(5)])
    result = slurm.submit_array(load_config(config.project_dir), ledger, max_parallel=2, dry_run=True)
    assert result.dry_run and result.job_ids == [] and result.tasks == 4
    assert result.array_specs == ["0-3%2"] and result.script == result.scripts[0]
    assert "#SBATCH --array=0-3%2" in result.script
    assert ledger.submissions() == []
    assert not config.logs_dir.exists()
    # nothing pending: nothing to submit
    for study in ledger.studies():
        claim = ledger.claim(WorkerInfo("h", 1), 60)
        ledger.complete(claim, {}, {})
    result = slurm.submit_array(config, ledger, dry_run=True)
    assert result.tasks == 0 and result.array_specs == [] and result.script == ""


# -- sizing --------------------------------------------------------------------------------------

@pytest.mark.parametrize("tasks, size, throttle, specs", [
    (1, 1001, 0, ["0"]),
    (4, 1001, 2, ["0-3%2"]),
    (4, 1001, 4, ["0-3"]),
    (10, 10, 0, ["0-9"]),
    (12, 10, 3, ["0-9%3", "0-1"]),  # 2 tasks under a %3 throttle need none
    (25, 10, 0, ["0-9", "0-9", "0-4"]),
    (2500, 1001, 50, ["0-1000%50", "0-1000%50", "0-497%50"]),
    (0, 10, 0, []),
])
def test_plan_arrays(tasks: int, size: int, throttle: int, specs: list[str]) -> None:
    planned = plan_arrays(tasks, size, throttle)
    assert planned == specs
    # never an index at or above MaxArraySize, and the counts add up
    counts = []
    for spec in planned:
        base = spec.split("%")[0]
        high = int(base.split("-")[-1])
        assert high < size
        counts.append(high + 1)
    assert sum(counts) == tasks


def test_default_tasks() -> None:
    kw = dict(time_limit="04:00:00", signal_grace=120)
    assert default_tasks(0, max_parallel=4, **kw) == 0
    assert default_tasks(3, max_parallel=4, **kw) == 3
    assert default_tasks(100, max_parallel=4, **kw) == 8              # twice the throttle
    assert default_tasks(1000, max_parallel=0, **kw) == slurm.DEFAULT_TASK_CAP
    # 2000 studies of 3 min in 4 h tasks (80 % usable): 63 studies per task -> 32 tasks, more than 2 x 8
    assert default_tasks(2000, max_parallel=8, study_seconds=[180.0] * 9, **kw) == 32
    # quick studies: the throttle decides
    assert default_tasks(2000, max_parallel=8, study_seconds=[1.0], **kw) == 8
    assert default_tasks(5, max_parallel=8, study_seconds=[10000.0], **kw) == 5
    assert default_tasks(50, max_parallel=0, time_limit="garbage", signal_grace=0, study_seconds=[1.0]) == 50


@pytest.mark.parametrize("text, seconds", [
    ("1", 60), ("90", 5400), ("5:30", 330), ("04:00:00", 14400), ("2-0", 172800), ("1-02", 93600),
    ("1-02:03", 93780), ("1-02:03:04", 93784), ("UNLIMITED", None), ("", None), ("INFINITE", None),
])
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_allocation_deadline_outside_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert allocation_deadline({}) is None
    assert allocation_deadline({"SLURM_JOB_ID": "12; rm"}) is None
    # Slurm's commands missing: None, never an exception
    monkeypatch.setenv("PATH", str(tmp_path))
    assert allocation_deadline({"SLURM_JOB_ID": "123"}) is None
    assert slurm.max_array_size() == slurm.DEFAULT_MAX_ARRAY_SIZE


# -- reading Slurm's answers -------------------------------------------------------------------

# Real output of our test cluster (Slurm 22.05.8): array 21 = `--array=0-5%2 --requeue`, task 0
# cancelled, task 1 requeued (`scontrol requeue 21_1`); job 22 is a plain (non-array) job.
SQUEUE_SAMPLE = """\
21|0|23|CANCELLED|0|2026-11-23T22:26:27|None|
21|1|24|PENDING|1|2026-11-23T22:26:40|JobArrayTaskLimit|
21|4|21|PENDING|0|N/A|JobArrayTaskLimit|
21|5|21|PENDING|0|N/A|JobArrayTaskLimit|
21|2|25|RUNNING|0|2026-11-23T22:26:29|None|
21|3|26|RUNNING|0|2026-11-23T22:26:29|None|
22|N/A|22|RUNNING|0|2026-11-23T22:26:27|None|
"""

# Real output of `sacct -X -P -n -o JobID,JobIDRaw,State,ExitCode,Start,Elapsed,NodeList` on our
# test cluster with slurmdbd (BATCHSEG_SLURM_ACCOUNTING=1): array 92 = `--array=0-5%2`, task 0
# cancelled; 93 `exit 3`; 94 a plain job; 100 a one-task array whose worker got SIGKILL.
SACCT_SAMPLE = """\
93|93|FAILED|3:0|2026-11-23T22:34:40|00:00:00|localhost
94|94|COMPLETED|0:0|2026-11-23T22:34:40|00:00:01|localhost
92_0|95|CANCELLED by 0|0:0|2026-11-23T22:34:40|00:00:03|localhost
92_1|96|RUNNING|0:0|2026-11-23T22:34:40|00:00:06|localhost
92_[2-5%2]|92|PENDING|0:0|Unknown|00:00:00|None assigned
100_0|100|FAILED|0:9|2026-11-23T22:35:04|00:00:02|localhost
"""


def test_parse_squeue() -> None:
    tasks = {t.label: t for t in parse_squeue(SQUEUE_SAMPLE)}
    assert set(tasks) == {"21_0", "21_1", "21_2", "21_3", "21_4", "21_5", "22"}
    assert tasks["21_0"].state == "CANCELLED" and tasks["21_0"].job_id == "23"
    assert tasks["21_1"].state == "PENDING" and tasks["21_1"].restarts == 1
    assert tasks["21_4"].start is None and tasks["21_4"].job_id == "21"
    assert tasks["21_2"].start == pytest.approx(slurm.parse_timestamp("2026-11-23T22:26:29"))
    assert tasks["22"].task_id is None and tasks["22"].array_job_id == "22"


def test_parse_sacct() -> None:
    tasks = {t.label: t for t in parse_sacct(SACCT_SAMPLE)}
    assert set(tasks) == {"93", "94", "92_0", "92_1", "92_2", "92_3", "92_4", "92_5", "100_0"}
    assert tasks["92_0"].state == "CANCELLED" and tasks["92_0"].job_id == "95"
    assert tasks["92_1"].state == "RUNNING" and tasks["92_1"].start == slurm.parse_timestamp("2026-11-23T22:34:40")
    assert tasks["92_4"].state == "PENDING" and tasks["92_4"].start is None
    assert tasks["93"].state == "FAILED" and tasks["93"].detail == "3:0" and tasks["93"].task_id is None
    assert tasks["100_0"].state == "FAILED" and tasks["100_0"].detail == "0:9"


@dataclass
class Attempt:
    study_id: str
    token: str
    worker: WorkerInfo
    claimed_at: float


def attempt(task: str | None, claimed_at: float, restarts: int | None = None, job: str = "21") -> Attempt:
    worker = WorkerInfo("node1", 42, slurm_job_id="99", slurm_array_job_id=job if task is not None else None,
                        slurm_array_task_id=task, slurm_restart_count=restarts)
    if task is None:
        worker.slurm_job_id = job
    return Attempt("s1", "tok", worker, claimed_at)


def report(text: str = SQUEUE_SAMPLE, job: str = "21") -> JobReport:
    rep = JobReport(job, "squeue")
    for task in parse_squeue(text):
        if task.array_job_id == job:
            rep.tasks[task.task_id] = task
    return rep


def test_lost_reason() -> None:
    started = slurm.parse_timestamp("2026-11-23T22:26:29")
    # a running task whose incarnation claimed the study: alive
    assert lost_reason(attempt("2", started + 3), report()) is None
    assert lost_reason(attempt("2", started + 3, restarts=0), report()) is None
    # cancelled task: gone, with Slurm's state in the message
    reason = lost_reason(attempt("0", started), report())
    assert reason and "21_0" in reason and "CANCELLED" in reason
    # requeued and waiting to start again: the old worker is gone
    reason = lost_reason(attempt("1", started, restarts=0), report())
    assert reason and "requeued" in reason
    # running again after a requeue: the claim came from the earlier incarnation
    rerun = report(SQUEUE_SAMPLE.replace("21|2|25|RUNNING|0|", "21|2|25|RUNNING|1|"))
    assert "requeued" in (lost_reason(attempt("2", started + 3, restarts=0), rerun) or "")
    assert lost_reason(attempt("2", started + 3, restarts=1), rerun) is None
    # ... and without restart counts, from the start time
    assert "requeued" in (lost_reason(attempt("2", started - 60), report()) or "")
    # a task Slurm forgot while it still knows the array; a job it forgot entirely
    assert "no longer knows task 21_9" in (lost_reason(attempt("9", started), report()) or "")
    assert "no longer knows job 21" in (lost_reason(attempt("2", started), JobReport("21", "unknown")) or "")
    # a plain job (no array)
    assert lost_reason(attempt(None, started, job="22"), report(job="22")) is None
    # from sacct: Slurm's state and exit code go into the message
    gone = JobReport("100", "sacct", {t.task_id: t for t in parse_sacct(SACCT_SAMPLE) if t.array_job_id == "100"})
    assert "100_0 (job 100) FAILED, exit 0:9" in (lost_reason(attempt("0", 0.0, job="100"), gone) or "")
    # COMPLETED while the ledger shows the study running: lost
    done = JobReport("21", "squeue", {"2": TaskState("21", "2", "25", "COMPLETED", 0, started)})
    assert "COMPLETED" in (lost_reason(attempt("2", started + 3), done) or "")
    timeout = JobReport("21", "squeue", {"2": TaskState("21", "2", "25", "TIMEOUT", 0, started)})
    assert "TIMEOUT" in (lost_reason(attempt("2", started + 3), timeout) or "")
    # a local worker (no Slurm ids) is never judged here
    assert lost_reason(Attempt("s", "t", WorkerInfo("h", 1), 0.0), report()) is None


def test_lost_class_tells_a_time_limit_from_other_losses() -> None:
    started = slurm.parse_timestamp("2026-11-23T22:26:29")
    timed_out = report(SQUEUE_SAMPLE.replace("21|0|23|CANCELLED|", "21|0|23|TIMEOUT|"))
    assert "21|0|23|CANCELLED|" in SQUEUE_SAMPLE
    assert lost_class(attempt("0", started), timed_out) == "worker.timeout"
    assert lost_class(attempt("0", started), report()) == "worker.lost"
    assert lost_class(attempt("9", started), report()) == "worker.lost"


def test_workers_per_task_makes_the_task_a_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker: the worker itself (exec). N: `work --workers N`, still exec'd, so it gets Slurm's signals."""
    monkeypatch.setattr(sys, "executable", str(write_stub(tmp_path / "python-stub")))
    config = make_config(tmp_path, gres="gpu:2", cpus_per_task=6)
    single = run_script(render_script(config, tasks=1, array_spec="0"), tmp_path)
    assert "--workers" not in single
    config.slurm.workers_per_task = 3
    script = render_script(config, tasks=1, array_spec="0")
    assert exec_line(script).endswith(" --workers 3")
    assert run_script(script, tmp_path)[-2:] == ["--workers", "3"]
    assert "#SBATCH --gres=gpu:2" in sbatch_lines(script) and "#SBATCH --cpus-per-task=6" in sbatch_lines(script)
    assert exec_line(render_script(config, tasks=1, array_spec="0", overrides={"workers_per_task": 1})) \
        == exec_line(render_script(make_config(tmp_path, gres="gpu:2"), tasks=1, array_spec="0"))
