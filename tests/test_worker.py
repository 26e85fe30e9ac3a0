"""The worker loop under signals and sudden death, with real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest

from batchseg.ledger import Ledger
from batchseg.worker import has_time_for_another
from tests.conftest import batchseg, noop_project, set_config, status_json


@pytest.fixture
def slow_project(tmp_path: Path) -> Path:
    """Three good studies, a no-op segmenter that takes a few seconds, short leases."""
    return noop_project(tmp_path, 3, seed=5, segmenter_options={"delay": 4.0}, lease_seconds=3,
                        heartbeat_seconds=1)


def start_worker(project: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batchseg", "work", "--project", str(project)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_running(project: Path, timeout: float = 30) -> str:
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            running = ledger.running()
            if running:
                return running[0].study_id
            time.sleep(0.1)
        raise AssertionError("no study started running")
    finally:
        ledger.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signal_releases_the_study_without_charge(slow_project: Path, signum: int) -> None:
    worker = start_worker(slow_project)
    study = wait_for_running(slow_project)
    time.sleep(0.5)  # inside the segmenter now
    worker.send_signal(signum)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    ledger = Ledger(f"sqlite:///{slow_project / 'ledger.sqlite'}")
    row = ledger.study(study)
    assert row["state"] == "pending" and row["attempts"] == 0
    last = ledger.history(study)[-1]
    assert last["event"] == "released" and signal.Signals(signum).name in last["message"]
    ledger.close()
    assert not list((slow_project / "results").rglob("*.nii.gz")), "nothing of the released study was published"


def test_killed_worker_study_is_reclaimed_after_its_lease(slow_project: Path) -> None:
    worker = start_worker(slow_project)
    study = wait_for_running(slow_project)
    time.sleep(1.5)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    time.sleep(3.5)  # let the lease run out
    set_config(slow_project, segmenter_options={"delay": 0.0})
    batchseg("run", "--project", str(slow_project), "--workers", "2")
    status = status_json(slow_project)
    assert status["states"]["done"] == 3
    events = Ledger(f"sqlite:///{slow_project / 'ledger.sqlite'}").history(study)
    assert [e["event"] for e in events] == ["added", "claimed", "lost", "claimed", "done"]
    assert events[2]["error_class"] == "worker.lost"
    results = slow_project / "results"
    staging = results / ".staging"
    assert not staging.exists() or not any(staging.iterdir()), "a killed worker's staging folder was left"
    for path in results.rglob("*"):
        if path.name.endswith(".nii.gz"):
            nib.load(path).get_fdata()  # a complete file, or this raises
        elif path.suffix == ".json":
            json.loads(path.read_text())


def test_run_exit_status_is_nonzero_when_a_study_fails(slow_project: Path) -> None:
    ledger = Ledger(f"sqlite:///{slow_project / 'ledger.sqlite'}")
    first = next(ledger.studies())["study_id"]
    ledger.close()
    set_config(slow_project, segmenter_options={"delay": 0.0, "fail_studies": [first]}, max_attempts=1)
    result = batchseg("run", "--project", str(slow_project), check=False)
    assert result.returncode == 1
    status = status_json(slow_project)
    assert status["states"]["done"] == 2 and status["failures"][0]["error_class"] == "segment.error"


def test_run_limit_processes_at_most_n(slow_project: Path) -> None:
    set_config(slow_project, segmenter_options={"delay": 0.0})
    batchseg("run", "--project", str(slow_project), "--workers", "2", "--limit", "1")
    assert status_json(slow_project)["states"]["done"] == 1


def test_time_budget() -> None:
    now = 1000.0
    assert has_time_for_another(None, None, now)
    assert has_time_for_another(now + 100, None, now)
    assert not has_time_for_another(now - 1, None, now)
    assert has_time_for_another(now + 200, 60.0, now)
    assert not has_time_for_another(now + 100, 60.0, now), "60 s x 1.5 + 30 s slack does not fit in 100 s"


def test_a_segmenter_that_cannot_start_releases_and_stops(slow_project: Path) -> None:
    set_config(slow_project, segmenter_options={"no_such_option": 1})
    result = batchseg("work", "--project", str(slow_project), check=False)
    assert result.returncode == 3 and "could not start" in result.stderr
    status = status_json(slow_project)
    assert status["states"]["pending"] == 3 and status["states"]["failed"] == 0, "no study pays for a bad config"


def test_no_publishing_after_a_takeover_even_when_heartbeats_failed(slow_project: Path) -> None:
    from batchseg.config import load_config
    from batchseg.ledger import WorkerInfo
    from batchseg.worker import Heartbeat, Worker

    worker = Worker(load_config(slow_project))
    claim = worker.ledger.claim(WorkerInfo("a", 1), lease_seconds=-1)   # its lease already ran out
    beat = Heartbeat(worker.ledger, claim, interval=3600, lease=60)      # never beats in this test
    assert worker.ledger.claim(WorkerInfo("b", 2), 60).study_id != claim.study_id
    assert worker.ledger.expire_leases() == [] and worker.ledger.study(claim.study_id)["state"] == "pending"
    assert worker.ledger.claim(WorkerInfo("b", 2), 60) is not None
    assert not worker._may_publish(claim, beat), "the claim was taken over: nothing may be published"

    fresh = worker.ledger.claim(WorkerInfo("a", 1), 60)
    assert worker._may_publish(fresh, beat)
    worker.ledger.close()


def test_ledger_calls_are_retried_while_the_database_is_unreachable() -> None:
    from sqlalchemy.exc import OperationalError

    from batchseg.errors import LedgerUnreachable
    from batchseg.worker import with_retries

    calls = []

    def flaky(value: int) -> int:
        calls.append(value)
        if len(calls) < 3:
            raise OperationalError("UPDATE studies", {}, Exception("database is locked"))
        return value * 2

    assert with_retries(flaky, 21, first_wait=0.01) == 42 and len(calls) == 3
    def gone() -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    with pytest.raises(LedgerUnreachable, match="server closed the connection"):
        with_retries(gone, window=0.05, first_wait=0.01)


def test_a_moved_dataset_is_found_through_the_config(slow_project: Path, tmp_path: Path) -> None:
    import shutil

    from batchseg.config import load_config

    config = load_config(slow_project)
    moved = tmp_path / "elsewhere"
    shutil.move(config.dataset, moved)
    set_config(slow_project, dataset=str(moved), segmenter_options={"delay": 0.0})
    batchseg("run", "--project", str(slow_project))
    assert status_json(slow_project)["states"]["done"] == 3


def test_a_findings_digest_that_fails_leaves_the_study_done_without_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from batchseg import worker
    from batchseg.config import load_config

    project = noop_project(tmp_path, 2, seed=3)

    def broken(*_args: object) -> str:
        raise TypeError("a metadata file no digest can be made of")

    monkeypatch.setattr(worker, "findings_digest", broken)
    stats = worker.run_worker(load_config(project))
    assert len(stats.done) == 2
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    rows = list(ledger.studies("done"))
    ledger.close()
    assert len(rows) == 2 and all(row["findings"] is None for row in rows)
