"""executors/local.py: the worker command shared with Slurm, and run_local's watch over its workers."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from batchseg.config import Config, load_config
from batchseg.executors import slurm
from batchseg.executors.local import run_local, split_quota, worker_command, worker_environment
from batchseg.ledger import Ledger
from tests.conftest import noop_project


def test_worker_command_locally_and_in_a_slurm_task_is_the_same(tmp_path: Path) -> None:
    config = Config(project_dir=tmp_path / "p", db="postgresql://u@h/db")
    project = str((tmp_path / "p").resolve())
    assert worker_command(config, 3) == [sys.executable, "-m", "batchseg", "work", "--project", project,
                                         "--max-studies", "3"]
    assert worker_command(Config(project_dir=tmp_path), python="python3") == [
        "python3", "-m", "batchseg", "work", "--project", str(tmp_path.resolve())]
    task = slurm.task_command(config, config.slurm)
    assert task == worker_command(config, python=os.path.abspath(sys.executable))
    config.container.runtime, config.container.image = "apptainer", "/i.sif"
    task = slurm.task_command(config, config.slurm)
    assert task[task.index("/i.sif") + 1:] == worker_command(config, python="python3")


def test_split_quota() -> None:
    assert split_quota(None, 3) == [None, None, None]
    assert split_quota(5, 3) == [2, 2, 1]


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    return noop_project(tmp_path, 2, seed=7, segmenter_options={"delay": 0.5})


def test_a_failing_on_tick_leaves_the_workers_watched(small_project: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(small_project)
    calls = []

    def broken_display() -> None:
        calls.append(1)
        raise RuntimeError("terminal went away\nsecond line")

    run = run_local(config, workers=2, on_tick=broken_display, tick_seconds=0.05)
    assert run.returncodes == [0, 0], "run_local waited for its workers to finish"
    assert len(calls) > 2, "on_tick was called on every tick, not dropped after the first failure"
    ledger = Ledger(config.db_url)
    try:
        assert ledger.summary()["states"].get("done") == 2
    finally:
        ledger.close()
    err = capsys.readouterr().err
    assert err.count("progress display failed") == 1, "said once, not on every tick"
    assert "RuntimeError: terminal went away second line" in err


def test_no_database_url_on_a_workers_command_line_and_no_password_in_its_environment(tmp_path: Path) -> None:
    from batchseg.config import write_config

    config = Config(project_dir=tmp_path, db="postgresql+psycopg://lab:secret@db.example/ledger")
    write_config(config)
    assert "--db" not in worker_command(load_config(tmp_path))
    assert "BATCHSEG_DB" not in worker_environment(load_config(tmp_path)), "workers read the project's own URL"
    override = load_config(tmp_path)
    override.db = "postgresql+psycopg://lab:other-secret@other:5432/ledger?sslmode=require"
    assert not any("other" in arg for arg in worker_command(override))
    env = worker_environment(override)
    assert env["BATCHSEG_DB"] == "postgresql+psycopg://lab@other:5432/ledger?sslmode=require"


def test_workers_are_spread_over_the_gpus_and_split_the_cpus(tmp_path: Path) -> None:
    """run --gpus 0,1 with 3 workers: each worker's history rows carry its own CUDA_VISIBLE_DEVICES."""
    from batchseg.executors.local import group_exit_code

    project = noop_project(tmp_path, 6, seed=3, segmenter_options={"delay": 0.3})
    config = load_config(project)
    run = run_local(config, workers=3, gpus=["0", "1"], tick_seconds=0.05)
    assert run.returncodes == [0, 0, 0] and group_exit_code(run.returncodes) == 0
    assert [s.gpu for s in run.slots] == ["0", "1", "0"]
    ledger = Ledger(config.db_url)
    try:
        claims = [e for e in ledger.history() if e["event"] == "claimed"]
    finally:
        ledger.close()
    gpu_of = dict(zip(run.pids, ["0", "1", "0"]))
    assert len(claims) == 6 and {e["pid"] for e in claims} <= set(run.pids)
    for event in claims:
        assert event["cuda_visible_devices"] == gpu_of[event["pid"]]
    threads = max(1, (len(os.sched_getaffinity(0))) // 3)
    for path in run.logs:
        assert f"CUDA_VISIBLE_DEVICES=" in path.read_text() and f"{threads} CPU thread(s)" in path.read_text()


def test_group_exit_code() -> None:
    from batchseg.executors.local import group_exit_code

    assert group_exit_code([0, 0, 0]) == 0
    assert group_exit_code([0, 3, 1]) == 3
    assert group_exit_code([0, -9]) == 137


def test_work_group_passes_usr1_to_every_worker_and_exits_zero(tmp_path: Path) -> None:
    """`work --workers 2` (a Slurm task's group): USR1 to the parent releases both held studies."""
    import signal
    import subprocess
    import time

    project = noop_project(tmp_path, 3, seed=5, segmenter_options={"delay": 60.0})
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
    parent = subprocess.Popen([sys.executable, "-m", "batchseg", "work", "--project", str(project), "--workers", "2"],
                              env=env, stderr=subprocess.PIPE, text=True)
    ledger = Ledger(load_config(project).db_url)
    try:
        deadline = time.monotonic() + 60
        while len(ledger.running()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        held = ledger.running()
        assert len(held) == 2
        claims = [e for e in ledger.history() if e["event"] == "claimed"]
        assert sorted(e["cuda_visible_devices"] for e in claims) == ["0", "1"]
        parent.send_signal(signal.SIGUSR1)
        _, err = parent.communicate(timeout=60)
        assert parent.returncode == 0, err
        assert ledger.summary()["states"]["pending"] == 3
        for attempt in held:
            released = [e for e in ledger.history(attempt.study_id) if e["event"] == "released"]
            assert len(released) == 1 and "SIGUSR1" in released[0]["message"]
    finally:
        if parent.poll() is None:
            parent.kill()
        ledger.close()
    assert "worker w0: GPU 0" in err and "worker w1: GPU 1" in err and "exits 0" in err


def test_work_group_replaces_a_dead_worker_on_its_gpu_and_exits_zero(tmp_path: Path) -> None:
    """`work --workers 2`: the worker on GPU 1 is SIGKILLed holding a study; it is marked lost at once,
    a replacement starts with CUDA_VISIBLE_DEVICES=1, every study ends done and the task exits 0."""
    import signal
    import subprocess

    from tests.helpers import wait_until

    project = noop_project(tmp_path, 5, seed=6, segmenter_options={"delay": 2.0}, lease_seconds=900,
                           heartbeat_seconds=1)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
    parent = subprocess.Popen([sys.executable, "-m", "batchseg", "work", "--project", str(project), "--workers", "2"],
                              env=env, stderr=subprocess.PIPE, text=True)
    ledger = Ledger(load_config(project).db_url)
    try:
        def on_gpu_1() -> dict | None:
            claims = {e["pid"]: e for e in ledger.history() if e["event"] == "claimed"}
            held = [a for a in ledger.running() if claims.get(a.worker.pid, {}).get("cuda_visible_devices") == "1"]
            return {"pid": held[0].worker.pid, "study": held[0].study_id} if held else None

        victim = wait_until(on_gpu_1, 120, what="the worker on GPU 1 to hold a study")
        os.kill(victim["pid"], signal.SIGKILL)
        _, err = parent.communicate(timeout=180)
        assert parent.returncode == 0, err
        summary = ledger.summary()["states"]
        assert summary["done"] == 5 and summary["running"] == 0, (summary, err)
        lost = [e for e in ledger.history(victim["study"]) if e["event"] == "lost"]
        assert lost and f"pid {victim['pid']} killed by SIGKILL" in lost[0]["message"], lost
        claims = [e for e in ledger.history() if e["event"] == "claimed"]
        others = {e["pid"] for e in claims if e["cuda_visible_devices"] == "1"} - {victim["pid"]}
        assert others, "a replacement on GPU 1 claimed studies"
        assert "in its place" in err
    finally:
        if parent.poll() is None:
            parent.kill()
        ledger.close()
