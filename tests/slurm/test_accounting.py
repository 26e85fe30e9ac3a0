"""Reconciling through sacct once squeue has forgotten a task, and a requeued task (real Slurm + slurmdbd).

CI starts Slurm with accounting and a short MinJobAge (scripts/check); on a cluster with the
default MinJobAge of 300 s the first test waits that long.
"""
from __future__ import annotations

import re
import subprocess
import time

from batchseg.executors.slurm import submit_array, sync
from tests.slurm.conftest import Project, squeue_tasks, task_state, wait_gone, wait_until


def slurm_setting(name: str) -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    match = re.search(rf"^{name}\s*=\s*(.*)$", out, re.MULTILINE)
    return match.group(1).strip() if match else ""


def accounting_on() -> None:
    kind = slurm_setting("AccountingStorageType")
    assert kind.endswith("slurmdbd"), (f"AccountingStorageType={kind}: these tests need sacct; start Slurm with "
                                       "BATCHSEG_SLURM_ACCOUNTING=1 bash scripts/local-slurm.sh start")


def deaf_holding(project: Project, task: str, for_seconds: float = 6.0) -> str | None:
    """The study task `task` has held long enough to be inside the noop segmenter's deaf wait
    (the claim is followed by the DICOM conversion, which still listens to signals)."""
    for attempt in project.ledger.running():
        if attempt.worker.slurm_array_task_id == task and time.time() - attempt.claimed_at >= for_seconds:
            return attempt.study_id
    return None


def test_a_timeout_that_squeue_forgot_is_marked_worker_timeout_through_sacct(make_project) -> None:
    """The worker cannot release (deaf to TERM): Slurm kills it at the time limit, then forgets the job."""
    accounting_on()
    min_job_age = int(slurm_setting("MinJobAge").split()[0])
    project = make_project(studies=1, signal_grace=0)
    project.config.segmenter_options = {"delay": 600.0, "deaf": True}
    from batchseg.config import write_config

    write_config(project.config)
    (study,) = project.good
    (job,) = submit_array(project.config, project.ledger, tasks=1, overrides={"time": "1"}).job_ids
    wait_until(lambda: deaf_holding(project, "0"), 60, what="the task to hold the study")
    wait_gone([job], 150)                                      # Slurm enforces whole minutes
    assert task_state(f"{job}_0") == "TIMEOUT"
    assert project.ledger.study(study)["state"] == "running"   # killed before it could release
    # slurmctld purges finished jobs MinJobAge after their end, on a check that runs every minute
    wait_until(lambda: not squeue_tasks([job]), min_job_age + 150, interval=2.0, what="squeue to forget the job")

    report = sync(project.config, project.ledger)
    assert report.marked_lost == [study]
    (lost,) = [e for e in project.ledger.history(study) if e["event"] == "lost"]
    assert lost["error_class"] == "worker.timeout"
    assert f"{job}_0" in lost["message"] and "TIMEOUT" in lost["message"], lost["message"]
    assert [j["source"] for j in report.jobs] == ["sacct"]
    assert report.jobs[0]["task_states"] == {"TIMEOUT": 1}
    assert project.ledger.study(study)["state"] == "pending" and project.ledger.study(study)["attempts"] == 1


def test_a_requeued_task_reclaims_its_study_at_once_and_records_its_restart(make_project) -> None:
    """scontrol requeue of a running task whose worker cannot release: the restarted task frees the study."""
    project = make_project(studies=1)
    project.config.segmenter_options = {"delay": 30.0, "deaf": True}
    project.config.lease_seconds = 900                          # "at once" must not mean "after the lease"
    from batchseg.config import write_config

    write_config(project.config)
    (study,) = project.good
    (job,) = submit_array(project.config, project.ledger, tasks=1).job_ids
    wait_until(lambda: deaf_holding(project, "0"), 60, what="the task to hold the study")
    requeued_at = time.time()
    subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True)
    wait_until(lambda: project.ledger.study(study)["state"] == "done", 180, what="the study to be done")

    events = [e for e in project.ledger.history(study) if e["event"] != "added"]
    assert [e["event"] for e in events] == ["claimed", "lost", "claimed", "done"], events
    first, lost, again, done = events
    assert first["slurm_restart_count"] == 0 and again["slurm_restart_count"] == 1
    assert first["slurm_array_task_id"] == again["slurm_array_task_id"] == done["slurm_array_task_id"] == "0"
    assert lost["error_class"] == "worker.lost" and "requeued" in lost["message"], lost["message"]
    assert lost["at"] - requeued_at < 120 < project.config.lease_seconds
    wait_gone([job], 60)
    log = (project.config.logs_dir / f"{job}_0.out").read_text()
    assert "restart 0 " in log and "restart 1 " in log and "marked lost" in log
