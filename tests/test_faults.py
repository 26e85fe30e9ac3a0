"""Faults found by the fault-injection run (issue 13): stalls, dead workers, database outages, crafted ids.

Real worker processes on a real SQLite ledger; the one test-only seam is FAULT_ENV, which makes a
worker stop itself (SIGSTOP) at a named point, as a frozen process would.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from batchseg.config import load_config
from batchseg.errors import LedgerUnreachable
from batchseg.ledger import Ledger, StudyRow, WorkerInfo
from batchseg.outputs import output_paths
from batchseg.pipeline import FAULT_ENV, sha256
from tests.conftest import batchseg, noop_project, set_config, status_json
from tests.helpers import kill_workers_at_the_tail, wait_until


def start_worker(project: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batchseg", "work", "--project", str(project)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def ledger_of(project: Path) -> Ledger:
    return Ledger(load_config(project).db_url)


# -- a: a worker frozen right after its publish check ----------------------------------------------

def test_a_worker_frozen_after_its_publish_check_cannot_undo_the_winner(tmp_path: Path) -> None:
    project = noop_project(tmp_path, 1, seed=3, lease_seconds=3, heartbeat_seconds=1,
                           segmenter_options={"delay": 0.2})
    ledger = ledger_of(project)
    study = next(ledger.studies())["study_id"]
    stalled = start_worker(project, env={FAULT_ENV: "publish"})
    newer = None
    try:
        wait_until(lambda: process_state(stalled.pid) == "T", 60, what="the worker to stop after its publish check")
        wait_until(lambda: (ledger.study(study)["lease_expires_at"] or 0) < time.time(), 30,
                   what="its lease to run out")
        staging = project / "results" / ".staging"
        frozen = set(staging.iterdir())
        newer = start_worker(project)

        def newer_at_publish() -> bool:   # its metadata is staged (it waits for the lock), or it is done already
            staged = [d for d in staging.iterdir() if d not in frozen] if staging.is_dir() else []
            return newer.poll() is not None or any((d / "metadata").is_dir() and any((d / "metadata").iterdir())
                                                   for d in staged)

        wait_until(newer_at_publish, 60, interval=0.05, what="the new attempt to reach its publish step")
        os.kill(stalled.pid, signal.SIGCONT)
        for proc in (stalled, newer):
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out
    finally:
        for proc in (stalled, newer):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
    row = ledger.study(study)
    done = [e for e in ledger.history(study) if e["event"] == "done"]
    ledger.close()
    assert row["state"] == "done" and len(done) == 1
    paths = output_paths(project / "results", study)
    metadata = json.loads(paths["metadata"].read_text())
    assert metadata["token"] == done[0]["token"], "the outputs belong to the attempt the ledger calls done"
    for name, checksum in metadata["checksums"].items():
        assert sha256(paths[name]) == checksum, f"{name} is not the file the metadata vouches for"


# -- b: the database cannot be reached at the publish check ----------------------------------------

def test_an_unreachable_database_at_the_publish_check_is_waited_for(tmp_path: Path) -> None:
    from batchseg.worker import Heartbeat, Worker

    project = noop_project(tmp_path, 2, seed=4, db_retry_seconds=5)
    worker = Worker(load_config(project))
    claim = worker.ledger.claim(WorkerInfo("a", 1), 60)
    beat = Heartbeat(worker.ledger, claim, interval=3600, lease=60)   # never beats in this test
    real = worker.ledger.heartbeat
    failures = []

    def flaky(*args: object) -> bool:
        if len(failures) < 2:
            failures.append(1)
            raise OperationalError("UPDATE studies", {}, Exception("server closed the connection unexpectedly"))
        return real(*args)

    worker.ledger.heartbeat = flaky
    assert worker._may_publish(claim, beat), "the token still holds: the finished study is published"
    assert len(failures) == 2

    def down(*_args: object) -> bool:
        raise OperationalError("UPDATE studies", {}, Exception("connection refused"))

    worker.ledger.heartbeat = down
    with pytest.raises(LedgerUnreachable):
        worker._may_publish(claim, beat)   # never read as "taken over"
    assert worker.ledger.study(claim.study_id)["state"] == "running", "nothing charged"
    worker.ledger.close()


# -- d: the retry window ---------------------------------------------------------------------------

def test_the_retry_window_outlasts_a_database_restart(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    from batchseg import worker as worker_module

    clock = [0.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(worker_module.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))

    def restarting() -> str:   # a failover that takes two minutes
        if clock[0] < 120:
            raise OperationalError("SELECT 1", {}, Exception("the database system is starting up"))
        return "claimed"

    caplog.set_level(logging.WARNING, logger="batchseg.worker")
    assert worker_module.with_retries(restarting) == "claimed"
    waits = [r.getMessage() for r in caplog.records if "trying again in" in r.getMessage()]
    assert len(waits) >= 5, "one log line per wait"
    assert "trying again in 30 s" in waits[-1], "waits grow and are capped"
    with pytest.raises(LedgerUnreachable, match=r"unreachable for \d+ s \(db_retry_seconds = 60\)"):
        clock[0] = 0.0
        worker_module.with_retries(restarting, window=60)


def test_a_worker_that_gives_up_on_the_ledger_says_so_in_one_line(tmp_path: Path) -> None:
    project = noop_project(tmp_path, 1, seed=6, db_retry_seconds=2)
    result = batchseg("work", "--project", str(project), "--db", "postgresql+psycopg://nobody:pw@127.0.0.1:1/none",
                      check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("batchseg:")]
    assert len(lines) == 1 and lines[0].startswith("batchseg: worker gives up: the ledger stayed unreachable for")
    assert "Traceback" not in result.stderr and "pw@" not in result.stderr
    assert "trying again in 1 s" in result.stderr


# -- c: workers dying at the tail of the queue -----------------------------------------------------

def test_sigkill_at_the_tail_of_the_queue_still_ends_with_every_study_done(tmp_path: Path) -> None:
    project = noop_project(tmp_path, 6, seed=8, segmenter_options={"delay": 2.0}, lease_seconds=900,
                           heartbeat_seconds=1)
    kill_workers_at_the_tail(project, load_config(project).db_url, 6)


def test_an_idle_worker_waits_for_a_lease_that_runs_out(tmp_path: Path) -> None:
    project = noop_project(tmp_path, 2, seed=9, lease_seconds=4, heartbeat_seconds=1)
    ledger = ledger_of(project)
    # A worker that died holding a study; its lease outlasts the live worker's start on a busy machine.
    dead = ledger.claim(WorkerInfo("gone-host", 999999), 15)
    result = batchseg("work", "--project", str(project), timeout=120)
    assert "waiting for 1 studies other workers hold" in result.stderr
    assert ledger.study(dead.study_id)["state"] == "done", "the expired study was taken over, not left running"
    assert ledger.summary()["states"]["done"] == 2
    ledger.close()


# -- 3: ids from the ledger are checked again before they become paths ------------------------------

@pytest.mark.parametrize("study, series", [("../../../escape", "1"), ("7", "../../../escape")])
def test_a_crafted_ledger_row_never_reaches_the_filesystem(tmp_path: Path, study: str, series: str) -> None:
    project = noop_project(tmp_path / "a" / "b", 1, seed=10)
    ledger = ledger_of(project)
    ledger.add_studies([StudyRow(study, series_id=series)])
    before = sorted(p for p in tmp_path.rglob("*") if project not in p.parents and p != project)
    batchseg("work", "--project", str(project), check=False)
    row = ledger.study(study)
    ledger.close()
    assert row["state"] == "failed" and row["error_class"] == "input.bad_id", row
    assert "escape" in row["error_message"] and "cannot become a path" in row["error_message"]
    after = sorted(p for p in tmp_path.rglob("*") if project not in p.parents and p != project)
    assert after == before, "nothing was written outside the project"
    assert status_json(project)["states"]["done"] == 1, "the good study went on"


def test_stale_staging_cleanup_never_follows_a_symlink_out_of_staging(tmp_path: Path) -> None:
    project = noop_project(tmp_path, 1, seed=12, max_attempts=1)
    ledger = ledger_of(project)
    study = next(ledger.studies())["study_id"]
    ledger.close()
    victim = tmp_path / "victim"
    (victim / f"{study}-0000").mkdir(parents=True)
    (victim / f"{study}-0000" / "precious.txt").write_text("keep me")
    results = project / "results"
    results.mkdir(exist_ok=True)
    (results / ".staging").symlink_to(victim, target_is_directory=True)
    batchseg("work", "--project", str(project), check=False)
    assert (victim / f"{study}-0000" / "precious.txt").read_text() == "keep me"
    failure = status_json(project)["failures"][0]
    assert failure["error_class"] == "output.io" and "symbolic link" in failure["example"]


# -- 4: `run` exits 0 only when every study it handled ended done -----------------------------------

def test_run_interrupted_by_sigterm_exits_nonzero_and_says_what_is_left(tmp_path: Path) -> None:
    project = noop_project(tmp_path, 3, seed=13, segmenter_options={"delay": 5.0})
    run = subprocess.Popen([sys.executable, "-m", "batchseg", "run", "--project", str(project)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ledger = ledger_of(project)
    try:
        wait_until(lambda: ledger.running(), 60, what="a study to start")
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
        ledger.close()
    assert run.returncode == 128 + signal.SIGTERM, out + err
    assert "interrupted by SIGTERM: 3 studies left (3 pending, 0 running)" in err


def test_run_whose_failed_study_is_put_back_by_retry_failed_exits_nonzero(tmp_path: Path) -> None:
    project = noop_project(tmp_path, 2, seed=14, max_attempts=1)
    ledger = ledger_of(project)
    first = next(ledger.studies())["study_id"]
    set_config(project, segmenter_options={"delay": 6.0, "fail_studies": [first]})   # 6 s to act in
    run = subprocess.Popen([sys.executable, "-m", "batchseg", "run", "--project", str(project), "--limit", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: ledger.study(first)["state"] == "failed", 60, what="the first study to fail")
        batchseg("retry-failed", "--project", str(project))   # a colleague puts it back meanwhile
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert ledger.study(first)["state"] == "pending"
    ledger.close()
    assert run.returncode == 1, out + err
    assert "1 of 2 studies this run handled did not end done (1 pending)" in err


# -- 16: workers start the installed batchseg, whatever folder `run` is called from ------------------

def test_workers_ignore_a_batchseg_folder_in_the_current_directory(tmp_path: Path) -> None:
    project = noop_project(tmp_path, 1, seed=15)
    decoy = tmp_path / "decoy"
    (decoy / "batchseg").mkdir(parents=True)
    (decoy / "batchseg" / "__init__.py").write_text("")
    (decoy / "batchseg" / "__main__.py").write_text("raise SystemExit('imported the decoy batchseg')\n")
    console_script = Path(sys.executable).parent / "batchseg"
    result = subprocess.run([str(console_script), "run", "--project", str(project)], cwd=decoy,
                            capture_output=True, text=True, timeout=120)
    logs = "".join(p.read_text() for p in (project / "logs").glob("local-*.log"))
    assert "decoy" not in logs, logs
    assert result.returncode == 0, result.stdout + result.stderr
    assert status_json(project)["states"]["done"] == 1
