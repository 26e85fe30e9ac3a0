"""init into a new project: the new SQLite ledger is filled under a temporary name and appears whole, or not at all."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchseg import dataset
from batchseg.cli import cli
from batchseg.synth import synth_dataset


@pytest.fixture
def data(tmp_path: Path) -> Path:
    synth_dataset(tmp_path / "data", 5, seed=2, matrix=64, broken=False)
    return tmp_path / "data"


def test_init_fills_a_new_ledger_that_appears_in_wal_mode(data: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    result = CliRunner().invoke(cli, ["init", "--project", str(project), "--dataset", str(data), "--segmenter", "noop"])
    assert result.exit_code == 0, result.output
    assert "5 added, 0 already there" in result.output
    assert sorted(p.name for p in project.iterdir()) == ["batchseg.toml", "ledger.sqlite", "logs"]
    connection = sqlite3.connect(project / "ledger.sqlite")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("SELECT count(*) FROM studies").fetchone()[0] == 5
    assert connection.execute("SELECT count(*) FROM history WHERE event = 'added'").fetchone()[0] == 5
    connection.close()


@pytest.mark.parametrize("chunk", [None, 2], ids=["one process", "with the writer process"])
def test_an_init_that_fails_midway_leaves_no_ledger_and_no_temporary_file(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int | None) -> None:
    import multiprocessing

    from batchseg import ledger as ledger_module

    if chunk:   # the rows go to ledger_bulk.StagedWriter's process two at a time
        monkeypatch.setattr(ledger_module, "ADD_CHUNK", chunk)
        monkeypatch.setattr(ledger_module, "second_cpu", lambda: True)
    looked: list[str] = []
    real = dataset.SeriesTable.only_sagittal_t2   # each study's row is made as it goes into the ledger

    def breaks_at_the_third(table: dataset.SeriesTable, value: str) -> str | None:
        looked.append(value)
        if len(looked) == 3:
            raise MemoryError("out of memory")
        return real(table, value)

    monkeypatch.setattr(dataset.SeriesTable, "only_sagittal_t2", breaks_at_the_third)
    project = tmp_path / "p"
    result = CliRunner().invoke(cli, ["init", "--project", str(project), "--dataset", str(data), "--segmenter", "noop"])
    assert isinstance(result.exception, MemoryError)
    assert sorted(p.name for p in project.iterdir()) == ["batchseg.toml", "logs"], \
        "no ledger (not an empty nor a half one) and no temporary file"
    assert not multiprocessing.active_children()
    monkeypatch.setattr(dataset.SeriesTable, "only_sagittal_t2", real)
    again = CliRunner().invoke(cli, ["init", "--project", str(project), "--dataset", str(data)])
    assert again.exit_code == 0, again.output
    assert "5 added, 0 already there" in again.output
    with sqlite3.connect(project / "ledger.sqlite") as connection:
        assert connection.execute("SELECT count(*), sum(state = 'pending') FROM studies").fetchone() == (5, 5)
        assert connection.execute("SELECT n FROM counts WHERE name = 'state:pending'").fetchone() == (5,)


def test_init_removes_the_temporary_ledger_of_a_killed_init_on_this_host_only(data: Path, tmp_path: Path) -> None:
    import subprocess

    from batchseg.ledger_sqlite import _host

    project = tmp_path / "p"
    project.mkdir()
    ended = subprocess.Popen(["true"])
    ended.wait()
    running = subprocess.Popen(["sleep", "60"])
    try:
        killed = project / f".ledger.sqlite.{_host()}.{ended.pid}.0123456789ab.tmp"
        alive = project / f".ledger.sqlite.{_host()}.{running.pid}.0123456789ab.tmp"
        elsewhere = project / f".ledger.sqlite.another-host.{ended.pid}.0123456789ab.tmp"
        other = project / f".notes.{_host()}.{ended.pid}.0123456789ab.tmp"
        for path in (killed, alive, elsewhere, other):
            path.write_bytes(b"half a ledger")
        result = CliRunner().invoke(cli, ["init", "--project", str(project), "--dataset", str(data),
                                          "--segmenter", "noop"])
        assert result.exit_code == 0, result.output
        assert not killed.exists()
        assert alive.exists() and elsewhere.exists() and other.exists()
        assert (project / "ledger.sqlite").exists()
        killed.write_bytes(b"half a ledger")   # and an init into the ledger there
        result = CliRunner().invoke(cli, ["init", "--project", str(project), "--dataset", str(data)])
        assert result.exit_code == 0, result.output
        assert not killed.exists() and alive.exists()
    finally:
        running.kill()
        running.wait()
