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
