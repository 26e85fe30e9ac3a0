"""workers_per_task: one array task runs several workers over its GPUs (real Slurm, fake GPUs)."""
from __future__ import annotations

import subprocess
import time
from collections import defaultdict
from pathlib import Path

from batchseg.config import load_config, write_config
from batchseg.executors.slurm import submit_array
from batchseg.ledger import Ledger
from tests.conftest import batchseg
from tests.helpers import assert_no_overlapping_claims
from tests.slurm.conftest import Project, outputs_are_clean, wait_gone, wait_until

GROUP = {"workers_per_task": 3, "gres": "gpu:2", "cpus_per_task": 3, "mem": "900M"}


def job_line(job: str) -> str:
    return subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout


def claims_by_task(ledger: Ledger) -> dict[str, list[dict]]:
    tasks: dict[str, list[dict]] = defaultdict(list)
    for event in ledger.history():
        if event["event"] == "claimed":
            tasks[f"{event['slurm_array_job_id']}_{event['slurm_array_task_id']}"].append(event)
    return tasks


def test_three_workers_per_task_over_two_gpus_finish_the_demo_dataset(tmp_path: Path) -> None:
    """The demo's dataset (broken studies included) through one task of 3 workers on 2 fake GPUs."""
    data = tmp_path / "data"
    batchseg("synth", str(data), "--studies", "8", "--seed", "0", "--matrix", "64")      # what `demo` makes
    project = tmp_path / "p"
    batchseg("init", "--project", str(project), "--dataset", str(data), "--studies", str(data / "study_ids.txt"),
             "--segmenter", "noop")
    config = load_config(project)
    # a study takes 2 s, so each of the three workers claims some before the queue runs dry
    config.segmenter_options = {"delay": 2.0}
    config.heartbeat_seconds, config.lease_seconds = 2, 120
    config.slurm.time, config.slurm.signal_grace = "5", 60
    for key, value in GROUP.items():
        setattr(config.slurm, key, value)
    write_config(config)
    ledger = Ledger.for_config(config)
    try:
        dry = batchseg("submit", "--array", "--project", str(project), "--tasks", "1", "--dry-run").stdout
        assert " --workers 3\n" in dry and "#SBATCH --gres=gpu:2" in dry
        (job,) = submit_array(config, ledger, tasks=1).job_ids
        wait_gone([job], 180)

        states = ledger.summary()["states"]
        assert (states["done"], states["failed"], states["skipped"], states["pending"]) == (5, 2, 1, 0), states
        assert "JobState=COMPLETED" in job_line(f"{job}_0") and "ExitCode=0:0" in job_line(f"{job}_0")
        claims = claims_by_task(ledger)[f"{job}_0"]
        gpu_of_pid = defaultdict(set)
        for event in claims:
            gpu_of_pid[event["pid"]].add(event["cuda_visible_devices"])
        assert len(gpu_of_pid) == 3, f"three workers in the task, got pids {sorted(gpu_of_pid)}"
        assert all(len(gpus) == 1 for gpus in gpu_of_pid.values()), "each worker keeps its one GPU"
        assert sorted(g for gpus in gpu_of_pid.values() for g in gpus) == ["0", "0", "1"], \
            "round robin over the task's two GPUs"
        assert_no_overlapping_claims(ledger.history())
        log = (config.logs_dir / f"{job}_0.out").read_text()
        for index, gpu in enumerate(["0", "1", "0"]):
            assert f"worker w{index}: GPU {gpu}, 1 thread(s)" in log
            assert (config.logs_dir / f"{job}_0-w{index}.log").is_file()
        assert "this task exits 0" in log
        done = [row["study_id"] for row in ledger.studies("done")]
        outputs_are_clean(config, done)
    finally:
        ledger.close()


def holding_all(project: Project, task: str, count: int, for_seconds: float = 1.5) -> list[str] | None:
    held = [a.study_id for a in project.ledger.running()
            if a.worker.slurm_array_task_id == task and time.time() - a.claimed_at >= for_seconds]
    return held if len(held) == count else None


def test_usr1_to_the_task_releases_every_workers_study_and_exits_zero(make_project) -> None:
    project = make_project(studies=4, delay=60.0, **GROUP)
    (job,) = submit_array(project.config, project.ledger, tasks=1).job_ids
    held = wait_until(lambda: holding_all(project, "0", 3), 90, what="the task's three workers to hold a study each")
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{job}_0"], check=True)
    wait_gone([job], 60)

    show = job_line(f"{job}_0")
    assert "JobState=COMPLETED" in show and "ExitCode=0:0" in show, show
    assert project.ledger.summary()["states"]["pending"] == 4
    gpus = []
    for study in held:
        events = project.ledger.history(study)
        released = [e for e in events if e["event"] == "released"]
        assert len(released) == 1 and "SIGUSR1" in released[0]["message"], events
        assert project.ledger.study(study)["attempts"] == 0
        gpus += [e["cuda_visible_devices"] for e in events if e["event"] == "claimed"]
    assert sorted(gpus) == ["0", "0", "1"]
    outputs_are_clean(project.config, [])
