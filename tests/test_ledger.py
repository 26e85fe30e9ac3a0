"""The ledger's state machine on a real SQLite file."""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import text

from batchseg.ledger import Ledger, StudyRow, WorkerInfo, schema_sql
from batchseg import ledger_sqlite
from batchseg.ledger_sqlite import filesystem_type
from tests.helpers import assert_no_overlapping_claims


def worker(pid: int = 1, **slurm: str) -> WorkerInfo:
    return WorkerInfo(host="node1", pid=pid, **slurm)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", max_attempts=2)
    ledger.add_studies([StudyRow(str(1000 + i), series_id=str(2**33 + i), input_path=f"/d/{i}") for i in range(3)])
    yield ledger
    ledger.close()


def test_claims_in_order_with_fresh_tokens_and_64_bit_ids(ledger: Ledger) -> None:
    first, second = ledger.claim(worker(), 60), ledger.claim(worker(2), 60)
    assert (first.study_id, second.study_id) == ("1000", "1001")
    assert first.token != second.token
    assert first.series_id == str(2**33)
    assert ledger.study("1000")["state"] == "running"


def test_done_is_fenced_by_the_token(ledger: Ledger) -> None:
    claim = ledger.claim(worker(), 60)
    stale = type(claim)(**{**claim.__dict__, "token": "not-the-token"})
    assert not ledger.complete(stale, {}, {})
    assert not ledger.heartbeat(stale, 60)
    assert ledger.fail(stale, "segment.error", "x") == ""
    assert ledger.complete(claim, {"nifti": "/o/x.nii.gz"}, {"total": 1.5})
    row = ledger.study("1000")
    assert row["state"] == "done" and row["outputs"] == {"nifti": "/o/x.nii.gz"}
    assert not ledger.complete(claim, {}, {}), "a second done with the same token changes nothing"


def test_retryable_failure_requeues_at_the_back_until_attempts_run_out(ledger: Ledger) -> None:
    claim = ledger.claim(worker(), 60)
    assert ledger.fail(claim, "segment.error", "cuda error\nwith two lines") == "pending"
    assert ledger.study("1000")["error_message"] == "cuda error with two lines"
    order = [ledger.claim(worker(), 60) for _ in range(3)]
    assert [c.study_id for c in order] == ["1001", "1002", "1000"]
    assert order[2].attempt == 2
    assert ledger.fail(order[2], "segment.error", "again") == "failed"
    row = ledger.study("1000")
    assert row["error_class"] == "segment.error" and row["error_message"] == "again"


def test_permanent_failure_fails_at_once(ledger: Ledger) -> None:
    claim = ledger.claim(worker(), 60)
    assert ledger.fail(claim, "input.bad_dicom", "study 1000: file 3.dcm is truncated") == "failed"


def test_release_does_not_charge_the_attempt(ledger: Ledger) -> None:
    claim = ledger.claim(worker(), 60)
    assert ledger.release(claim, "signal SIGUSR1")
    row = ledger.study("1000")
    assert row["state"] == "pending" and row["attempts"] == 0
    assert not ledger.release(claim, "twice")


def test_expired_lease_is_reclaimed_as_worker_lost(ledger: Ledger) -> None:
    lost = ledger.claim(worker(1), lease_seconds=-1)
    taken = ledger.claim(worker(2), 60)
    assert taken.study_id == "1001"
    # The expired study went back to pending during that claim, charged as worker.lost.
    row = ledger.study("1000")
    assert row["state"] == "pending" and row["error_class"] == "worker.lost" and row["attempts"] == 1
    assert not ledger.heartbeat(lost, 60), "the lost worker's heartbeat must say its claim is gone"
    assert ledger.claim(worker(3), 60).study_id == "1002"
    retaken = ledger.claim(worker(3), 60)
    assert retaken.study_id == "1000" and retaken.attempt == 2
    assert not ledger.complete(lost, {}, {})
    assert ledger.complete(retaken, {}, {})


def test_mark_lost_and_exhausted_attempts(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'one.sqlite'}", max_attempts=2)
    ledger.add_studies([StudyRow("1000")])
    for expected in ("pending", "failed"):
        claim = ledger.claim(worker(), 60)
        assert claim.study_id == "1000"
        assert ledger.mark_lost(claim.study_id, claim.token, "slurm says TIMEOUT") == expected
    assert ledger.study("1000")["error_message"] == "slurm says TIMEOUT"


def test_retry_failed_by_class_and_study(ledger: Ledger) -> None:
    for error_class in ("input.bad_dicom", "input.geometry", "input.bad_dicom"):
        claim = ledger.claim(worker(), 60)
        ledger.fail(claim, error_class, "bad")
    assert ledger.retry_failed(error_class="input.geometry") == ["1001"]
    assert ledger.retry_failed(study_ids=["1002"]) == ["1002"]
    assert ledger.retry_failed() == ["1000"]
    assert ledger.retry_failed() == []
    events = [e["event"] for e in ledger.history("1000")]
    assert events == ["added", "claimed", "failed", "retry"]


def test_add_again_keeps_states_and_history(ledger: Ledger) -> None:
    claim = ledger.claim(worker(), 60)
    ledger.complete(claim, {}, {})
    result = ledger.add_studies([StudyRow("1000"), StudyRow("5", skip_class="input.no_series", skip_message="none")])
    assert result.added == ["5"] and result.existing == ["1000"]
    assert ledger.study("1000")["state"] == "done"
    assert ledger.study("5")["state"] == "skipped"


def test_history_records_the_worker_and_slurm_ids(ledger: Ledger) -> None:
    who = worker(7, slurm_job_id="45", slurm_array_job_id="40", slurm_array_task_id="3")
    who.cuda_visible_devices = "0"
    claim = ledger.claim(who, 60)
    ledger.complete(claim, {}, {})
    done = ledger.history("1000")[-1]
    assert done["event"] == "done" and done["slurm_array_job_id"] == "40" and done["slurm_array_task_id"] == "3"
    assert done["cuda_visible_devices"] == "0" and done["pid"] == 7 and done["duration"] >= 0


def test_summary_contract(ledger: Ledger) -> None:
    ledger.add_studies([StudyRow("9", skip_class="input.no_series", skip_message="study 9: no T2")])
    claim = ledger.claim(worker(), 60)
    ledger.fail(claim, "input.bad_dicom", "study 1000: 3.dcm truncated")
    for _ in range(2):
        ledger.complete(ledger.claim(worker(), 60), {}, {})
    summary = ledger.summary()
    assert summary["total"] == 4
    assert summary["states"] == {"pending": 0, "running": 0, "done": 2, "failed": 1, "skipped": 1}
    assert summary["failures"] == [{"error_class": "input.bad_dicom", "count": 1, "studies": ["1000"],
                                    "example": "study 1000: 3.dcm truncated", "log": None}]
    assert summary["skipped"][0]["error_class"] == "input.no_series"
    assert summary["attempts"] == 3
    # Two studies done within a moment: no rate, and no ETA from one.
    assert "throughput_per_hour" not in summary and "eta_seconds" not in summary
    ledger.add_studies([StudyRow("10")])
    with ledger.engine.begin() as conn:   # the two done a minute and a half apart
        conn.exec_driver_sql("UPDATE history SET at = at - 90 WHERE event = 'done' AND study_id = "
                             "(SELECT study_id FROM history WHERE event = 'done' ORDER BY at LIMIT 1)")
    summary = ledger.summary()
    assert 39 < summary["throughput_per_hour"] <= 40 and 89 < summary["eta_seconds"] <= 91


def test_sqlite_uses_wal_on_a_local_disk(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert not ledger.on_network_fs


def test_filesystem_type_reads_proc_mounts() -> None:
    assert filesystem_type(Path("/proc/self")) == "proc"


def test_network_filesystem_gets_a_rollback_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_sqlite, "filesystem_type", lambda path: "nfs4")
    with pytest.warns(UserWarning, match="PostgreSQL"):
        ledger = Ledger(f"sqlite:///{tmp_path / 'nfs.sqlite'}")
    with ledger.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "delete"
    ledger.close()


def test_schema_file_matches_the_tables() -> None:
    schema = (Path(__file__).resolve().parents[1] / "db" / "schema.sql").read_text()
    assert schema_sql("sqlite") in schema and schema_sql("postgresql") in schema, \
        "db/schema.sql is stale: regenerate it with `python -m batchseg.ledger > db/schema.sql`"


def _claimer(url: str, results: "multiprocessing.Queue[list[tuple[str, str]]]", pid: int) -> None:
    ledger = Ledger(url)
    got = []
    while True:
        claim = ledger.claim(WorkerInfo("node", pid), 60)
        if claim is None:
            break
        got.append((claim.study_id, claim.token))
        ledger.complete(claim, {}, {})
    results.put(got)
    ledger.close()


def test_parallel_claims_never_double_claim(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    ledger = Ledger(url)
    ledger.add_studies([StudyRow(str(i)) for i in range(400)])
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_claimer, args=(url, queue, p)) for p in range(8)]
    for proc in procs:
        proc.start()
    claimed = [item for _ in procs for item in queue.get(timeout=120)]
    for proc in procs:
        proc.join(timeout=30)
    assert sorted(int(s) for s, _ in claimed) == list(range(400))
    assert ledger.summary()["states"]["done"] == 400
    assert_no_overlapping_claims(ledger.history())
    ledger.close()


def test_reads_take_no_write_lock(ledger: Ledger) -> None:
    """status and report read while a claim holds SQLite's write lock."""
    with ledger.engine.begin() as conn:  # BEGIN IMMEDIATE: the write lock, held
        conn.execute(text("UPDATE studies SET updated_at = updated_at"))
        other = Ledger(ledger.url)
        other.engine.pool.dispose()
        import sqlite3 as _sqlite3

        raw = _sqlite3.connect(ledger.url.removeprefix("sqlite:///"), timeout=0.2)
        try:
            raw.execute("BEGIN IMMEDIATE")
            raise AssertionError("a second writer should have been refused while the lock is held")
        except _sqlite3.OperationalError:
            pass
        finally:
            raw.close()
        assert other.summary()["total"] == 3
        assert [r["study_id"] for r in other.studies()] == ["1000", "1001", "1002"]
        other.close()


def test_states_of_claimed_since(ledger: Ledger) -> None:
    ledger.complete(ledger.claim(worker(), 60), {}, {})
    since = time.time()
    ledger.fail(ledger.claim(worker(), 60), "input.bad_dicom", "bad")
    assert ledger.states_of_claimed_since(since) == {"1001": "failed"}


def test_a_stale_write_adds_no_history(ledger: Ledger) -> None:
    claim = ledger.claim(worker(), 60)
    assert ledger.mark_lost(claim.study_id, claim.token, "slurm says CANCELLED") == "pending"
    assert ledger.fail(claim, "segment.error", "late") == ""
    assert ledger.mark_lost(claim.study_id, claim.token, "again") == ""
    assert [e["event"] for e in ledger.history("1000")] == ["added", "claimed", "lost"]


def test_requeue_skipped_only_when_the_dataset_now_serves_the_study(ledger: Ledger) -> None:
    ledger.add_studies([StudyRow("7", skip_class="input.no_series", skip_message="no T2"),
                        StudyRow("8", skip_class="input.no_series", skip_message="no T2")])
    moved = ledger.requeue_skipped([StudyRow("7", series_id="99", input_path="/d/7/99"),
                                    StudyRow("8", skip_class="input.no_series", skip_message="still none"),
                                    StudyRow("1000", series_id="5")])
    assert moved == ["7"]
    row = ledger.study("7")
    assert row["state"] == "pending" and row["series_id"] == "99" and row["error_class"] is None
    assert ledger.study("8")["state"] == "skipped" and ledger.study("1000")["state"] == "pending"
    assert [e["event"] for e in ledger.history("7")] == ["added", "reset"]


def _rows(n: int) -> list[StudyRow]:
    return [StudyRow(str(1000 + i), series_id=str(i), input_path=f"/d/{i}") for i in range(n)]


def test_a_staged_new_ledger_appears_whole_in_wal_mode(tmp_path: Path) -> None:
    final = tmp_path / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{final}", stage_new=True)
    with ledger.filling():
        ledger.add_studies(_rows(5))
        assert not final.exists(), "nothing at the ledger's name while it fills"
        assert [p.name for p in tmp_path.iterdir()][0].endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.sqlite"], "the temporary file is gone"
    assert ledger.states()["pending"] == 5 and [s["study_id"] for s in ledger.studies()][0] == "1000"
    with ledger.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    ledger.close()
    again = Ledger(f"sqlite:///{final}", stage_new=True)   # a ledger is there: used as it is
    with again.filling():
        assert again.add_studies(_rows(6)).added == ["1005"]
    assert again.states()["pending"] == 6
    again.close()


def test_a_staged_ledger_that_fails_midway_leaves_nothing(tmp_path: Path) -> None:
    def rows() -> Iterator[StudyRow]:
        yield from _rows(30)
        raise ValueError("the dataset broke")

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", stage_new=True)
    with pytest.raises(ValueError, match="broke"), ledger.filling():
        ledger.add_studies(rows())
    assert list(tmp_path.iterdir()) == [], "no ledger, no temporary file"
    ledger.close()


def test_a_staged_ledger_never_replaces_a_file_or_a_ledger_in_use_that_appeared(tmp_path: Path) -> None:
    final = tmp_path / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{final}", stage_new=True)
    with pytest.raises(RuntimeError, match="appeared while init filled"), ledger.filling():
        ledger.add_studies(_rows(3))
        final.write_text("someone else's")
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.sqlite"] and final.read_text() == "someone else's"
    ledger.close()
    final.unlink()
    ledger = Ledger(f"sqlite:///{final}", stage_new=True)
    with pytest.raises(RuntimeError, match="appeared while init filled"), ledger.filling():
        ledger.add_studies(_rows(3))
        other = Ledger(f"sqlite:///{final}")
        other.add_studies(_rows(1))
    assert other.states()["pending"] == 1, "the other ledger is as it was"
    other.close()
    ledger.close()


def test_a_staged_ledger_replaces_an_empty_one_that_status_made_meanwhile(tmp_path: Path) -> None:
    final = tmp_path / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{final}", stage_new=True)
    with ledger.filling():
        ledger.add_studies(_rows(3))
        Ledger(f"sqlite:///{final}").close()   # `batchseg status` opens a ledger it finds missing: an empty one
        with pytest.raises(RuntimeError, match="appeared while init filled"):
            held = Ledger(f"sqlite:///{final}")   # one still open is never replaced
            with held.engine.connect():
                ledger_sqlite.publish(ledger._staging["file"], str(final), False)
        held.close()
    assert ledger.states()["pending"] == 3
    ledger.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite"]


def test_a_staged_ledger_on_a_network_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_sqlite, "filesystem_type", lambda path: "nfs4")
    final = tmp_path / "nfs.sqlite"
    with pytest.warns(UserWarning, match=f"the ledger {final} is on a network filesystem"):
        ledger = Ledger(f"sqlite:///{final}", stage_new=True)
    with ledger.filling():
        ledger.add_studies(_rows(3))
    with ledger.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "delete"
    assert [p.name for p in tmp_path.iterdir()] == ["nfs.sqlite"]
    ledger.close()
