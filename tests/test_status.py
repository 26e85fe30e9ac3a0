"""`batchseg status` for people: a finished run, leases past expiry, and text that reaches a terminal."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchseg.config import load_config
from batchseg.ledger import Ledger, WorkerInfo
from tests.conftest import batchseg, noop_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return noop_project(tmp_path, 3, seed=31)


def test_status_after_the_work_is_finished_says_so(project: Path) -> None:
    batchseg("run", "--project", str(project), "--workers", "2")
    out = batchseg("status", "--project", str(project)).stdout
    assert "finished: all 3 studies ended (3 done, 0 failed, 0 skipped)" in out
    assert "ETA" not in out, out


def test_status_shows_a_lease_past_its_expiry(project: Path) -> None:
    ledger = Ledger(load_config(project).db_url)
    fresh = ledger.claim(WorkerInfo("live-host", 4343), lease_seconds=600)
    stuck = ledger.claim(WorkerInfo("gone-host", 4242), lease_seconds=-5)   # its worker died
    ledger.close()
    out = batchseg("status", "--project", str(project)).stdout
    assert "1 of the 2 running studies are past their lease" in out
    assert json.loads(batchseg("status", "--project", str(project), "--json").stdout)["leases_expired"] == 1
    view = batchseg("status", "--project", str(project), "--study", stuck.study_id).stdout
    assert "lease: expired" in view and "stopped heartbeating" in view
    assert "lease: held until" in batchseg("status", "--project", str(project), "--study", fresh.study_id).stdout


def test_control_characters_never_reach_the_terminal_raw(project: Path) -> None:
    from batchseg.ledger import StudyRow

    # What a file name (the dataset's folders) can carry into the ledger: escape sequences, a bell,
    # a bidi override. The text view shows them escaped; --json keeps them exact.
    hostile = "/data/\x1b]0;owned\x07\x1b[2Jname\u202ecod.exe"
    ledger = Ledger(load_config(project).db_url)
    ledger.add_studies([StudyRow("777", series_id="1", input_path=hostile, selection_reason=hostile)])
    claim = ledger.claim(WorkerInfo("host", 1), 60)
    ledger.fail(claim, "input.bad_dicom", f"study {claim.study_id}: bad file {hostile}")
    ledger.close()
    for args in (["--study", "777"], ["--study", claim.study_id], ["--failed"]):
        out = batchseg("status", "--project", str(project), *args).stdout
        assert not any(ch in out for ch in "\x1b\x07\u202e"), repr(out)
    assert "\\x1b[2Jname\\u202ecod.exe" in batchseg("status", "--project", str(project), "--study", "777").stdout
    raw = json.loads(batchseg("status", "--project", str(project), "--study", "777", "--json").stdout)
    assert raw["study"]["input_path"] == hostile
