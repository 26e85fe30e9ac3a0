"""The worker asks the ledger for the median study time only under a deadline, and not before every claim."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from batchseg.config import Config
from batchseg.ledger import Ledger, StudyRow
from batchseg.worker import Worker


@pytest.mark.parametrize("deadline_in, expected_calls", [(None, 0), (3600.0, 1)])
def test_median_study_time_is_asked_only_under_a_deadline_and_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deadline_in: float | None, expected_calls: int) -> None:
    config = Config(project_dir=tmp_path, segmenter="noop")
    ledger = Ledger(config.db_url)
    # Studies whose series folder is missing: each attempt ends at once (input.missing), the loop goes on.
    ledger.add_studies([StudyRow(str(i), input_path=str(tmp_path / "absent" / str(i))) for i in range(6)])
    ledger.close()
    calls = []
    real = Ledger.study_seconds
    monkeypatch.setattr(Ledger, "study_seconds", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    deadline = None if deadline_in is None else time.time() + deadline_in
    stats = Worker(config, deadline=deadline).run()
    assert len(stats.failed) == 6 and stats.stop_reason == "no pending studies"
    assert len(calls) == expected_calls
