"""Tasks that Slurm stops mid-study: scancel, a hard kill, USR1, the time limit."""
from __future__ import annotations

import subprocess
import time

from batchseg.config import write_config
from batchseg.executors.slurm import cancel, submit_array, sync
from tests.helpers import assert_no_overlapping_claims
from tests.slurm.conftest import Project, outputs_are_clean, task_state, wait_gone, wait_until


def holding(project: Project, task: str, for_seconds: float = 1.5) -> str | None:
    """The study that array task `task` has held for a while (so it is inside the segmenter), if any."""
    for attempt in project.ledger.running():
        if attempt.worker.slurm_array_task_id == task and time.time() - attempt.claimed_at >= for_seconds:
            return attempt.study_id
    return None


def events_of(project: Project, study: str) -> list[tuple[str, str | None]]:
    return [(e["event"], e["slurm_array_task_id"]) for e in project.ledger.history(study)]


def test_scancel_of_a_task_releases_its_study(make_project) -> None:
    """SIGTERM from scancel: the worker gives the study back, another task finishes it."""
    project = make_project(studies=3, delay=4.0)
    (job,) = submit_array(project.config, project.ledger, tasks=2).job_ids
    study = wait_until(lambda: holding(project, "0"), 60, what="task 0 to hold a study")
    subprocess.run(["scancel", f"{job}_0"], check=True)
    wait_gone([job], 90)

    assert project.ledger.summary()["states"]["done"] == 3
    events = events_of(project, study)
    assert events[:3] == [("added", None), ("claimed", "0"), ("released", "0")]
    assert events[-2:] == [("claimed", "1"), ("done", "1")]
    released = [e for e in project.ledger.history(study) if e["event"] == "released"][0]
    assert "SIGTERM" in released["message"] and released["slurm_array_job_id"] == job
    assert project.ledger.study(study)["attempts"] == 1          # a release is not charged
    assert task_state(f"{job}_0") == "CANCELLED"
    assert_no_overlapping_claims(project.ledger.history())
    outputs_are_clean(project.config, project.good)


def test_killed_task_is_marked_lost_by_sync(make_project) -> None:
    """SIGKILL leaves the ledger saying 'running'; sync asks Slurm and marks the study lost at once."""
    project = make_project(studies=5, delay=3.0)
    (job,) = submit_array(project.config, project.ledger, tasks=2).job_ids
    study = wait_until(lambda: holding(project, "0"), 60, what="task 0 to hold a study")
    subprocess.run(["scancel", "--batch", "--signal=KILL", f"{job}_0"], check=True)
    wait_until(lambda: task_state(f"{job}_0") not in ("RUNNING", "COMPLETING"), 30, what="task 0 to end")
    assert project.ledger.study(study)["state"] == "running"          # nobody told the ledger

    report = sync(project.config, project.ledger)
    assert report.marked_lost == [study]
    lost = [e for e in project.ledger.history(study) if e["event"] == "lost"]
    assert len(lost) == 1 and lost[0]["error_class"] == "worker.lost"
    state = task_state(f"{job}_0")
    assert f"{job}_0" in lost[0]["message"] and state in lost[0]["message"], (lost[0]["message"], state)
    assert sync(project.config, project.ledger).marked_lost == []     # once only

    wait_gone([job], 90)
    assert project.ledger.summary()["states"]["done"] == 5
    assert events_of(project, study)[-2:] == [("claimed", "1"), ("done", "1")]
    assert project.ledger.study(study)["attempts"] == 2               # the lost attempt counts
    outputs_are_clean(project.config, project.good)


def test_usr1_releases_the_study_and_exits_zero(make_project) -> None:
    project = make_project(studies=2, delay=60.0)
    (job,) = submit_array(project.config, project.ledger, tasks=1).job_ids
    study = wait_until(lambda: holding(project, "0"), 60, what="the task to hold a study")
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{job}_0"], check=True)
    wait_gone([job], 30)

    show = subprocess.run(["scontrol", "show", "job", f"{job}_0"], capture_output=True, text=True).stdout
    assert "JobState=COMPLETED" in show and "ExitCode=0:0" in show, show
    assert project.ledger.study(study)["state"] == "pending"
    released = [e for e in project.ledger.history(study) if e["event"] == "released"]
    assert len(released) == 1 and "SIGUSR1" in released[0]["message"]
    assert project.ledger.summary()["states"]["pending"] == 2
    log = (project.config.logs_dir / f"{job}_0.out").read_text()
    assert "released on SIGUSR1" in log
    assert sync(project.config, project.ledger).marked_lost == []
    outputs_are_clean(project.config, [])


def test_time_limit_mid_study_then_retried(make_project) -> None:
    """--time=1 with no early warning: TIMEOUT hits mid-study, the study comes back and is done later."""
    project = make_project(studies=1, delay=300.0, signal_grace=0)
    (study,) = project.good
    (job,) = submit_array(project.config, project.ledger, tasks=1, overrides={"time": "1"}).job_ids
    wait_until(lambda: holding(project, "0"), 60, what="the task to hold the study")
    wait_gone([job], 150)                           # Slurm enforces whole minutes, ~80 s here
    assert task_state(f"{job}_0") == "TIMEOUT"
    report = sync(project.config, project.ledger)   # in case the worker died before releasing
    row = project.ledger.study(study)
    assert row["state"] == "pending"
    ended = [e for e in project.ledger.history(study) if e["event"] in ("released", "lost")]
    assert len(ended) == 1 and ended[0]["slurm_array_job_id"] == job
    assert report.marked_lost == ([study] if ended[0]["event"] == "lost" else [])

    config = project.reload()
    config.segmenter_options = {"delay": 0.0}
    write_config(config)
    (again,) = submit_array(config, project.ledger).job_ids
    wait_gone([again], 60)
    assert project.ledger.study(study)["state"] == "done"
    claims = [e["slurm_array_job_id"] for e in project.ledger.history(study) if e["event"] == "claimed"]
    assert claims == [job, again]
    outputs_are_clean(config, [study])


def test_cancel_releases_held_studies(make_project) -> None:
    """`batchseg cancel`: the project's arrays go, their studies come back uncharged."""
    project = make_project(studies=3, delay=60.0)
    (job,) = submit_array(project.config, project.ledger, tasks=2).job_ids
    wait_until(lambda: holding(project, "0") and holding(project, "1"), 60, what="both tasks to hold a study")
    held = sorted(a.study_id for a in project.ledger.running())
    released = cancel(project.config, project.ledger)
    assert sorted(released) == held
    states = project.ledger.summary()["states"]
    assert states["pending"] == 3 and states["running"] == 0
    assert all(project.ledger.study(s)["attempts"] == 0 for s in held)
    assert [j["task_states"] for j in sync(project.config, project.ledger).jobs] == [{"CANCELLED": 2}]
    assert cancel(project.config, project.ledger) == []            # nothing left to cancel
