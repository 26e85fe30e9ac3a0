"""`status` and `report` without SQLAlchemy: the plain sqlite3 reader gives what the Ledger gives, with the same
SQL, and leaves every ledger that needs the Ledger (none yet, older, Slurm to ask, another database) to it."""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import batchseg.ledger_sqlite as ledger_sqlite
from batchseg.ledger import Ledger, StudyRow, reads_file
from batchseg.ledger_summary import PlainReader
from tests.conftest import batchseg
from tests.test_ledger_counts import _as_made_by_the_first_release, exercise, worker

REPO = Path(__file__).resolve().parents[1]


def test_the_generated_reads_are_the_core_statements_compiled() -> None:
    assert (REPO / "batchseg" / "ledger_reads.py").read_text() == reads_file(), \
        "batchseg/ledger_reads.py is stale: regenerate it with `python -m batchseg.ledger reads > batchseg/ledger_reads.py`"


@pytest.fixture
def busy(tmp_path: Path) -> Path:
    """A ledger with every transition, failed and skipped groups, done studies and a lease past its expiry."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{path}", max_attempts=2)
    exercise(ledger)
    ledger.add_studies([StudyRow(str(2000 + i)) for i in range(3)]
                       + [StudyRow(str(3000 + i), skip_class="input.no_series", skip_message=f"none {i}")
                          for i in range(5)])
    ledger.claim(worker(3), lease_seconds=-5)                 # its worker died
    ledger.close()
    return path


@pytest.mark.parametrize("per_group", [None, 4, 1, 0])
def test_the_plain_reader_gives_what_the_ledger_gives(busy: Path, per_group: int | None) -> None:
    ledger = Ledger(f"sqlite:///{busy}")
    expected = ledger.summary(studies_per_group=per_group)
    ledger.close()
    reader = PlainReader.open(f"sqlite:///{busy}")
    assert reader is not None
    try:
        found = reader.summary(studies_per_group=per_group)
    finally:
        reader.close()
    assert found == expected
    assert found["leases_expired"] == 1 and found["skipped"][0]["count"] == 5
    assert "median_study_seconds" in found and found["failures"]


def test_the_plain_reader_opens_a_file_path_as_well(busy: Path) -> None:
    reader = PlainReader.open(busy)
    assert reader is not None
    assert reader.summary()["total"] == 17
    reader.close()


def test_the_plain_reader_leaves_every_other_ledger_to_the_ledger(busy: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "none.sqlite"
    assert PlainReader.open(f"sqlite:///{missing}") is None
    assert not missing.exists(), "the reader must not create a ledger: the Ledger does, with its schema"
    for url in ("postgresql+psycopg://u@localhost/db", "sqlite://", "sqlite:///:memory:",
                f"sqlite:///{busy}?mode=ro", f"sqlite:///{str(busy).replace('/', '%2F')}"):
        assert PlainReader.open(url) is None, url
    old = tmp_path / "old.sqlite"
    ledger = Ledger(f"sqlite:///{old}")
    ledger.add_studies([StudyRow("1")])
    ledger.close()
    _as_made_by_the_first_release(old)
    assert PlainReader.open(old) is None, "a ledger without the counters gets them from the Ledger first"
    Ledger(f"sqlite:///{old}").close()
    assert PlainReader.open(old) is not None, "the Ledger brought it up to date"
    raw = sqlite3.connect(old)
    raw.execute("DELETE FROM meta WHERE key = 'attempt_seconds'")
    raw.commit()
    raw.close()
    assert PlainReader.open(old) is None, "a ledger without the kept attempt seconds gets them from the Ledger first"
    submitted = Ledger(f"sqlite:///{busy}")
    assert PlainReader.open(busy) is not None
    submitted.record_submission("123", "0-3", "#!/bin/sh", pending=4, tasks=4)
    submitted.close()
    assert PlainReader.open(busy) is None, "with Slurm arrays submitted, status reconciles (and writes)"
    monkeypatch.setattr(ledger_sqlite, "filesystem_type", lambda path: "nfs4")
    assert PlainReader.open(tmp_path / "old.sqlite") is None


def test_status_imports_no_sqlalchemy(busy: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "batchseg.toml").write_text('segmenter = "noop"\n')
    busy.rename(project / "ledger.sqlite")
    for extra in ([], ["--json"], ["--failed"]):
        code = ("import sys\nfrom batchseg.cli import cli\n"
                f"try:\n    cli.main(['status', '--project', {str(project)!r}, *{extra!r}], standalone_mode=False)\n"
                "finally:\n    print('sqlalchemy loaded' if 'sqlalchemy' in sys.modules else 'no sqlalchemy',"
                " file=sys.stderr)\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stderr.strip() == "no sqlalchemy", result.stderr
        assert ("17 studies" in result.stdout) or json.loads(result.stdout)["total"] == 17


@pytest.mark.parametrize("bounds", [(None, None), (None, 6), (6, None), (3, 9), (9, 3)])
def test_the_plain_reader_reads_the_report_s_rows_as_the_ledger_does(busy: Path, bounds: tuple[Any, Any]) -> None:
    ledger = Ledger(f"sqlite:///{busy}")
    expected = list(ledger.report_rows(first_seq=bounds[0], end_seq=bounds[1], page_size=4))
    cuts = {parts: ledger.report_cuts(parts) for parts in (1, 2, 3, 5, 40)}
    ledger.close()
    reader = PlainReader.open(busy)
    assert reader is not None
    try:
        assert list(reader.report_rows(first_seq=bounds[0], end_seq=bounds[1], page_size=4)) == expected
        assert {parts: reader.report_cuts(parts) for parts in cuts} == cuts
    finally:
        reader.close()
    assert len(expected) == {(None, None): 17, (9, 3): 0}.get(bounds, len(expected))
    assert any(row["attempt_errors"] for row in expected) or bounds != (None, None)
    assert cuts[40] == [] and len(cuts[2]) == 1


def test_report_imports_no_sqlalchemy_and_shows_the_ledger_s_url(busy: Path, tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "batchseg.toml").write_text('segmenter = "noop"\n')
    busy.rename(project / "ledger.sqlite")
    for extra in ([], ["--json"], ["--csv", str(tmp_path / "r.csv"), "--processes", "2"]):
        code = ("import sys\nfrom batchseg.cli import cli\n"
                f"try:\n    cli.main(['report', '--project', {str(project)!r}, *{extra!r}], standalone_mode=False)\n"
                "finally:\n    print('sqlalchemy loaded' if 'sqlalchemy' in sys.modules else 'no sqlalchemy',"
                " file=sys.stderr)\n")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stderr.strip().splitlines()[-1] == "no sqlalchemy", result.stderr
    assert (tmp_path / "r.csv").read_text().count("\n") == 18
    from sqlalchemy.engine import make_url

    from batchseg.config import load_config
    from batchseg.report.collect import shown_url

    config = load_config(project)
    assert shown_url(config) == make_url(config.db_url).render_as_string(hide_password=True)
    for url, shown in ((f"sqlite:///{project / 'ledger.sqlite'}", f"sqlite:///{project / 'ledger.sqlite'}"),
                       ("sqlite:///relative.sqlite", "sqlite:///relative.sqlite"),
                       ("postgresql+psycopg://me:secret@db.example/ledger", "postgresql+psycopg://me:***@db.example/ledger")):
        assert shown_url(dataclasses.replace(config, db=url)) == shown, url


def test_status_still_creates_and_migrates_the_ledger(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "batchseg.toml").write_text('segmenter = "noop"\n')
    out = batchseg("status", "--project", str(project)).stdout
    assert "0 studies, 0 attempts" in out and (project / "ledger.sqlite").is_file()
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    ledger.add_studies([StudyRow("1"), StudyRow("2", skip_class="input.no_series", skip_message="none")])
    ledger.close()
    _as_made_by_the_first_release(project / "ledger.sqlite")
    assert json.loads(batchseg("status", "--project", str(project), "--json").stdout)["states"]["skipped"] == 1
    raw = sqlite3.connect(project / "ledger.sqlite")
    assert dict(raw.execute("SELECT key, value FROM meta").fetchall())["counts"] == "1"
    raw.close()


def test_a_file_that_is_no_database_is_one_line(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "batchseg.toml").write_text('segmenter = "noop"\n')
    (project / "ledger.sqlite").write_bytes(b"not a database, only text " * 200)
    result = batchseg("status", "--project", str(project), check=False)
    assert result.returncode == 2 and result.stderr == "batchseg: ledger: file is not a database\n", result.stderr
