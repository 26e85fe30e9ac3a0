"""init again reads the CSV but looks at no study the ledger already has (a million of them cost more than the CSV)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from batchseg import dataset
from batchseg.cli import cli
from batchseg.synth import synth_dataset


def test_init_again_looks_only_at_new_studies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    synth_dataset(data, 5, seed=2, matrix=64, broken=False)
    project = tmp_path / "p"
    looked: list[str] = []
    real = dataset.SeriesTable.only_sagittal_t2   # each study's series are looked at here first
    monkeypatch.setattr(dataset.SeriesTable, "only_sagittal_t2",
                        lambda table, value: looked.append(value) or real(table, value))
    runner = CliRunner()
    first = runner.invoke(cli, ["init", "--project", str(project), "--dataset", str(data), "--limit", "3",
                                "--segmenter", "noop"])
    assert first.exit_code == 0, first.output
    assert len(looked) == 3 and "3 added, 0 already there" in first.output
    looked.clear()
    again = runner.invoke(cli, ["init", "--project", str(project), "--dataset", str(data), "--segmenter", "noop"])
    assert again.exit_code == 0, again.output
    assert len(looked) == 2, "only the two new studies are looked at"
    assert "5 studies listed, 3 already in the ledger" in again.output
    assert "2 added, 3 already there (kept as they were)" in again.output
    looked.clear()
    recheck = runner.invoke(cli, ["init", "--project", str(project), "--dataset", str(data), "--recheck-skipped"])
    assert recheck.exit_code == 0, recheck.output
    assert len(looked) == 5, "--recheck-skipped looks at every study"
    assert "0 added, 5 already there" in recheck.output
