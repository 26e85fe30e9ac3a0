"""A new ledger's rows written by a writer process (ledger_bulk.StagedWriter) while init makes them: the same ledger
as one process writes, and when either process fails, no ledger and no temporary file."""
from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

from batchseg import ledger as ledger_module
from batchseg import ledger_bulk
from batchseg.ledger import Ledger, StudyRow

SHAPES = [dict(series_id="7", series_description="Sagittal T2/STIR", input_path="/d/x", selection_reason="r"),
          dict(series_id="8"), dict(input_path="/d/é\n"), dict(selection_reason="only", series_description=""),
          dict(skip_class="input.no_series", skip_message="study: no series"), dict(skip_class="input.bad_id"), {}]


class _Text(str):
    """Text of a str subclass, as a dataset reader might give (marshal refuses it: the writer gets it pickled)."""


def _rows(n: int) -> list[StudyRow]:
    rows = [StudyRow(f"s{i}", **SHAPES[(i * i + i // 3) % len(SHAPES)]) for i in range(n)]
    rows[n // 2].series_description = _Text("Sagittal T2")
    return rows + rows[:3]   # given twice: known the second time


@pytest.fixture
def writers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Chunks of 8 rows; the pids of the writer processes started."""
    monkeypatch.setattr(ledger_module, "ADD_CHUNK", 8)
    monkeypatch.setattr(ledger_module, "second_cpu", lambda: True)
    started: list[int] = []
    real = ledger_bulk.StagedWriter.__init__

    def init(self: Any, *args: Any) -> None:
        real(self, *args)
        started.append(self.process.pid)

    monkeypatch.setattr(ledger_bulk.StagedWriter, "__init__", init)
    return started


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    connection = sqlite3.connect(path)
    try:
        return {
            "studies": connection.execute(
                "SELECT rowid, study_id, seq, series_id, series_description, selection_reason, input_path, state, "
                "attempts, error_class, error_message, added_at = updated_at FROM studies ORDER BY rowid").fetchall(),
            "history": connection.execute(
                "SELECT h.id, h.study_id, h.event, h.from_state, h.to_state, h.error_class, h.message, "
                "h.at = s.added_at FROM history h JOIN studies s USING (study_id) ORDER BY h.id").fetchall(),
            "counts": connection.execute("SELECT name, n FROM counts WHERE n != 0 ORDER BY name").fetchall(),
            "schema": connection.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall(),
        }
    finally:
        connection.close()


def _staged(folder: Path, rows: Any) -> Any:
    ledger = Ledger(f"sqlite:///{folder / 'ledger.sqlite'}", stage_new=True)
    try:
        with ledger.filling():
            return ledger.add_studies(rows)
    finally:
        ledger.close()


@pytest.mark.parametrize("n, cpus", [(60, 2), (5, 2), (60, 1)],
                         ids=["chunks: the writer process", "one chunk: this process", "one CPU: this process"])
def test_a_staged_ledger_is_the_one_a_single_process_fills(
        tmp_path: Path, writers: list[int], monkeypatch: pytest.MonkeyPatch, n: int, cpus: int) -> None:
    monkeypatch.setattr(ledger_module, "second_cpu", lambda: cpus > 1)
    rows = _rows(n)
    one = Ledger(f"sqlite:///{tmp_path / 'one.sqlite'}")   # not staged: SqliteBulk in this process
    expected = one.add_studies(rows)
    one.close()
    assert not writers
    (tmp_path / "staged").mkdir()
    got = _staged(tmp_path / "staged", rows)
    assert len(writers) == (n > 8 and cpus > 1)
    assert (got.added, got.existing) == (expected.added, expected.existing) == ([r.study_id for r in rows[:n]],
                                                                                ["s0", "s1", "s2"])
    assert _dump(tmp_path / "staged" / "ledger.sqlite") == _dump(tmp_path / "one.sqlite")
    assert sorted(p.name for p in (tmp_path / "staged").iterdir()) == ["ledger.sqlite"]
    assert not multiprocessing.active_children()


def test_a_writer_that_fails_raises_its_error_and_leaves_no_ledger(
        tmp_path: Path, writers: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    real = ledger_bulk.insert_rows
    calls: list[int] = []

    def full_disk(cursor: Any, rows: Any) -> None:   # in the writer process (forked with this patch)
        calls.append(1)
        if len(calls) == 3:
            raise sqlite3.OperationalError("database or disk is full")
        real(cursor, rows)

    monkeypatch.setattr(ledger_bulk, "insert_rows", full_disk)
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        _staged(tmp_path, _rows(200))
    assert len(writers) == 1
    assert list(tmp_path.iterdir()) == [], "no ledger, no temporary file"
    assert not multiprocessing.active_children()


def test_rows_that_fail_midway_stop_the_writer_and_leave_no_ledger(tmp_path: Path, writers: list[int]) -> None:
    def rows() -> Iterator[StudyRow]:
        yield from _rows(30)
        raise OSError("the dataset's disk went away")

    with pytest.raises(OSError, match="went away"):
        _staged(tmp_path, rows())
    assert len(writers) == 1
    assert list(tmp_path.iterdir()) == [], "no ledger, no temporary file"
    assert not multiprocessing.active_children()
