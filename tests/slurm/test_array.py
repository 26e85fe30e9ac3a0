"""Job arrays on a real Slurm: throttle, logs, Slurm ids and GPUs in the history, chunking."""
from __future__ import annotations

import subprocess
import time
from collections import defaultdict

from batchseg.executors.slurm import max_array_size, submit_array, sync
from tests.helpers import assert_no_overlapping_claims
from tests.slurm.conftest import outputs_are_clean, squeue_tasks, wait_gone, wait_until


def test_throttled_array_does_all_the_work(make_project) -> None:
    """4 tasks with %2 over 8 studies: all done, never more than 2 tasks at once, one log per task."""
    project = make_project(studies=8, delay=1.0, gres="gpu:1")
    result = submit_array(project.config, project.ledger, tasks=4, max_parallel=2)
    (job,) = result.job_ids
    assert result.array_specs == ["0-3%2"]
    max_running, deadline = 0, time.monotonic() + 120
    while time.monotonic() < deadline:
        tasks = squeue_tasks([job])
        max_running = max(max_running, sum(1 for _, state in tasks if state == "RUNNING"))
        if tasks and all(state not in ("PENDING", "RUNNING", "COMPLETING") for _, state in tasks):
            break
        time.sleep(0.1)
    wait_gone([job], 10)

    states = project.ledger.summary()["states"]
    assert states["done"] == 8 and states["pending"] == states["running"] == states["failed"] == 0
    assert 1 <= max_running <= 2
    logs = sorted(p.name for p in project.config.logs_dir.glob(f"{job}_*.out"))
    assert logs == [f"{job}_{i}.out" for i in range(4)]

    events = project.ledger.history()
    assert_no_overlapping_claims(events)
    claims = [e for e in events if e["event"] == "claimed"]
    assert len(claims) == 8
    for event in claims:
        assert event["slurm_array_job_id"] == job
        assert event["slurm_array_task_id"] in {"0", "1", "2", "3"}
        assert event["slurm_job_id"] and event["slurm_job_id"].isdigit()
        assert event["slurm_restart_count"] in (None, 0)
        # --gres=gpu:1 on the fake GPUs: Slurm set CUDA_VISIBLE_DEVICES and the worker recorded it
        assert event["cuda_visible_devices"] in {"0", "1"}
    # from the history too: never more than 2 tasks holding studies at the same instant
    spans: dict[str, list[float]] = defaultdict(lambda: [float("inf"), 0.0])
    for event in events:
        if event["slurm_array_task_id"] is not None:
            span = spans[event["slurm_array_task_id"]]
            span[0], span[1] = min(span[0], event["at"]), max(span[1], event["at"])
    for _, (start, _) in spans.items():
        assert sum(1 for s, e in spans.values() if s <= start <= e) <= 2

    report = sync(project.config, project.ledger)
    assert report.marked_lost == []
    (summary,) = report.jobs
    assert summary["job_id"] == job and summary["task_states"] == {"COMPLETED": 4}
    outputs_are_clean(project.config, project.good)


def test_more_tasks_than_max_array_size(make_project) -> None:
    """Several arrays, each indexed from 0, chained so that the throttle holds across them."""
    limit = max_array_size()
    assert limit <= 32, f"MaxArraySize={limit}: this test wants the small one of scripts/local-slurm.sh"
    project = make_project(studies=2)
    result = submit_array(project.config, project.ledger, tasks=limit + 2, max_parallel=4)
    assert result.array_specs == [f"0-{limit - 1}%4", "0-1"]
    first, second = result.job_ids
    dependency = subprocess.run(["squeue", "-h", "-j", second, "-o", "%E"], capture_output=True, text=True).stdout
    assert dependency.startswith(f"afterany:{first}"), dependency
    recorded = project.ledger.submissions()
    assert [(s["job_id"], s["array_spec"], s["tasks"]) for s in recorded] == [
        (first, f"0-{limit - 1}%4", limit + 2), (second, "0-1", limit + 2)]
    assert all(s["script"].startswith("#!/bin/bash") and s["pending"] == 2 for s in recorded)
    wait_gone(result.job_ids, 180)
    report = sync(project.config, project.ledger)
    assert [j["task_states"] for j in report.jobs] == [{"COMPLETED": limit}, {"COMPLETED": 2}]
    logs = list(project.config.logs_dir.glob("*.out"))
    assert len(logs) == limit + 2
    assert project.ledger.summary()["states"]["done"] == 2


def test_dry_run_then_status_shows_the_jobs(make_project) -> None:
    """--dry-run records nothing; a real submit appears in `batchseg status --json`."""
    from tests.conftest import status_json

    project = make_project(studies=2)
    dry = submit_array(project.config, project.ledger, dry_run=True)
    assert dry.job_ids == [] and project.ledger.submissions() == []
    result = submit_array(project.config, project.ledger)
    assert result.tasks == 2 and result.array_specs == ["0-1"]
    wait_gone(result.job_ids, 60)
    wait_until(lambda: project.ledger.summary()["states"]["done"] == 2, 10, what="both studies done")
    status = status_json(project.config.project_dir)
    assert status["states"]["done"] == 2
    assert status["slurm_jobs"][0]["job_id"] == result.job_ids[0]
    assert status["slurm_jobs"][0]["task_states"] == {"COMPLETED": 2}


def test_allocation_deadline_inside_a_job(tmp_path) -> None:
    """Inside a job with --time=5 the deadline is the job's start plus 5 minutes, as Slurm reports it."""
    import os
    import sys

    from tests.slurm.conftest import REPO

    out = tmp_path / "deadline.txt"
    code = ("import time; from batchseg.executors.slurm import allocation_deadline as d; "
            "print(time.time(), d())")
    job = subprocess.run(["sbatch", "--parsable", "--time=5", "--mem=100M", f"--output={out}",
                          "--wrap", f"{sys.executable} -c '{code}'"],
                         capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip()
    wait_gone([job], 60)
    now, deadline = out.read_text().split()
    start = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%S"], capture_output=True,
                           text=True).stdout.strip()
    from batchseg.executors.slurm import parse_timestamp

    assert float(deadline) == parse_timestamp(start) + 300
    assert 0 < float(deadline) - float(now) <= 300
