"""The ledger's summary counters and hot path, on a real SQLite file: counters always equal a count of the rows."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from batchseg.ledger import Ledger, StudyRow, WorkerInfo


def worker(pid: int = 1) -> WorkerInfo:
    return WorkerInfo(host="node1", pid=pid)


def recount(ledger: Ledger) -> dict[str, int]:
    """The counters as a full count of the rows would give them (what status computed before the counters)."""
    out: dict[str, int] = {}
    with ledger.engine.connect() as conn:
        for state, n in conn.execute(text("SELECT state, count(*) FROM studies GROUP BY state")):
            out[f"state:{state}"] = n
        for state, cls, n in conn.execute(text(
                "SELECT state, error_class, count(*) FROM studies WHERE state IN ('failed', 'skipped') "
                "GROUP BY state, error_class")):
            key = f"{state}:{cls or 'unknown'}"
            out[key] = out.get(key, 0) + n
        out["claims"] = conn.execute(text("SELECT count(*) FROM history WHERE event = 'claimed'")).scalar()
        out["retried"] = conn.execute(text(
            "SELECT count(DISTINCT study_id) FROM history WHERE event IN ('failed', 'lost') "
            "AND to_state = 'pending'")).scalar()
    return out


def nonzero(counted: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counted.items() if v}


def exercise(ledger: Ledger) -> None:
    """Every transition the ledger has, in one history."""
    ledger.add_studies([StudyRow(str(1000 + i), series_id=str(i)) for i in range(8)]
                       + [StudyRow("7", skip_class="input.no_series", skip_message="no T2")])
    a = ledger.claim(worker(), 60)
    assert ledger.fail(a, "segment.oom", "out of memory") == "pending"          # retried
    b = ledger.claim(worker(), 60)
    assert ledger.fail(b, "input.bad_dicom", "truncated") == "failed"           # permanent
    c = ledger.claim(worker(), 60)
    assert ledger.complete(c, {"qc": "x.png"}, {"total": 1.0})
    d = ledger.claim(worker(), 60)
    assert ledger.release(d, "SIGUSR1")
    e = ledger.claim(worker(), -1)                                              # its lease runs out at once
    f = ledger.claim(worker(2), 60)                                             # ... and this claim expires it
    assert ledger.study(e.study_id)["error_class"] == "worker.lost"
    assert ledger.mark_lost(f.study_id, f.token, "slurm says gone") == "pending"
    assert ledger.retry_failed() == [b.study_id]
    assert ledger.requeue_skipped([StudyRow("7", series_id="70")]) == ["7"]
    assert not ledger.complete(a, {}, {}), "a stale token changes nothing, counters included"
    while (claim := ledger.claim(worker(), 60)) is not None:
        ledger.fail(claim, "input.geometry", "gap") if claim.study_id == "1007" else ledger.complete(claim, {}, {})


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", max_attempts=2)
    yield ledger
    ledger.close()


def test_counters_follow_every_transition(ledger: Ledger) -> None:
    exercise(ledger)
    assert nonzero(ledger.counts()) == nonzero(recount(ledger))
    summary = ledger.summary()
    assert summary["states"] == {"pending": 0, "running": 0, "done": 8, "failed": 1, "skipped": 0}
    assert summary["attempts"] == recount(ledger)["claims"] and summary["retried_studies"] == 3


def test_hand_written_sql_keeps_the_counters_right(ledger: Ledger) -> None:
    """Triggers, not batchseg's code, keep the counts: an operator's UPDATE or DELETE is counted too."""
    exercise(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE studies SET state = 'failed', error_class = 'internal' WHERE study_id = '1001'"))
        conn.execute(text("DELETE FROM studies WHERE study_id = '1002'"))
    assert nonzero(ledger.counts()) == nonzero(recount(ledger))
    assert ledger.summary()["failures"][0]["error_class"] in ("internal", "input.geometry")


def test_summary_lists_a_few_studies_per_group_when_asked(ledger: Ledger) -> None:
    ledger.add_studies([StudyRow(str(i), skip_class="input.no_series", skip_message=f"study {i}: none")
                        for i in range(10)])
    full = ledger.summary()["skipped"][0]
    assert full["count"] == 10 and full["studies"] == [str(i) for i in range(10)] and full["example"] == "study 0: none"
    few = ledger.summary(studies_per_group=3)["skipped"][0]
    assert few["count"] == 10 and few["studies"] == ["0", "1", "2"] and few["example"] == "study 0: none"
    none = ledger.summary(studies_per_group=0)["skipped"][0]
    assert none["count"] == 10 and none["studies"] == [] and none["example"] == "" and none["log"] is None


def _as_made_by_the_first_release(path: Path) -> None:
    """Strip what this version adds (counters, triggers, later indexes), as a ledger from before them looks."""
    raw = sqlite3.connect(path)
    for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        raw.execute(f"DROP TRIGGER {name}")
    for name in ("ix_studies_seq", "ix_studies_problems", "ix_history_event_at"):
        raw.execute(f"DROP INDEX {name}")
    raw.execute("DROP TABLE counts")
    raw.execute("DROP TABLE count_deltas")
    raw.execute("DELETE FROM meta WHERE key = 'counts'")
    raw.commit()
    raw.close()


def test_a_ledger_made_before_the_counters_gets_them_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    ledger = Ledger(f"sqlite:///{path}", max_attempts=2)
    exercise(ledger)
    expected = nonzero(recount(ledger))
    ledger.close()
    _as_made_by_the_first_release(path)
    reopened = Ledger(f"sqlite:///{path}")
    assert nonzero(reopened.counts()) == expected
    with reopened.engine.connect() as conn:
        indexes = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    assert {"ix_studies_seq", "ix_studies_problems", "ix_history_event_at"} <= indexes
    reopened.add_studies([StudyRow("5")])
    assert reopened.counts()["state:pending"] == 1
    reopened.close()


def _busy_ledger(path: Path, n: int) -> Ledger:
    """n studies, three quarters done (a claim and a done each), some failed and skipped, the rest pending."""
    ledger = Ledger(f"sqlite:///{path}", max_attempts=2)
    ledger.add_studies([StudyRow(str(i), skip_class="input.no_series" if i % 50 == 0 else None,
                                 skip_message="none" if i % 50 == 0 else None) for i in range(n)])
    for i in range(n * 3 // 4):
        claim = ledger.claim(worker(), 60)
        ledger.fail(claim, "input.bad_dicom", "bad") if i % 30 == 0 else ledger.complete(claim, {}, {})
    with ledger.engine.begin() as conn:   # that work was done yesterday: both ledgers had the same last hour
        conn.execute(text("UPDATE history SET at = at - 86400"))
    return ledger


def _vm_steps(ledger: Ledger, call: Any) -> int:
    """SQLite virtual-machine instructions that `call` makes the ledger's connections run (in hundreds)."""
    from sqlalchemy import event

    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_progress_handler(count, 100)

    event.listen(ledger.engine, "connect", on_connect)
    ledger._hot.close()
    ledger.engine.dispose()
    try:
        call()
    finally:
        event.remove(ledger.engine, "connect", on_connect)
    return steps[0]


def test_status_and_claims_cost_the_same_in_a_ledger_ten_times_larger(tmp_path: Path) -> None:
    """Counted in SQLite instructions, not seconds: no statement may visit rows in proportion to the ledger."""
    small, large = _busy_ledger(tmp_path / "s.sqlite", 300), _busy_ledger(tmp_path / "l.sqlite", 3000)

    def cycle(ledger: Ledger) -> None:
        ledger.summary(studies_per_group=3)
        expired = ledger.claim(worker(), -1)
        retried = ledger.claim(worker(), 60)                 # expires the first one: a retry, max(seq)
        ledger.fail(retried, "segment.oom", "oom")           # another retry to the back of the queue
        ledger.complete(ledger.claim(worker(), 60), {}, {})
        assert expired is not None and ledger.study(expired.study_id)["state"] == "pending"

    costs = {}
    for name, ledger in (("small", small), ("large", large)):
        cycle(ledger)   # warm: the first call prepares statements and reads the schema
        costs[name] = _vm_steps(ledger, lambda ledger=ledger: cycle(ledger))
        ledger.close()
    assert costs["large"] < 1.5 * costs["small"], costs


def test_a_database_error_on_the_hot_path_is_sqlalchemys_and_the_ledger_recovers(ledger: Ledger) -> None:
    ledger.add_studies([StudyRow("1"), StudyRow("2")])
    claim = ledger.claim(worker(), 60)
    with ledger.engine.begin() as conn:
        conn.execute(text("ALTER TABLE history RENAME TO history_away"))
    with pytest.raises(sa_exc.OperationalError):   # what a worker's retry of the ledger call catches
        ledger.complete(claim, {}, {})
    assert ledger.study("1")["state"] == "running", "the failed transaction was rolled back whole"
    with ledger.engine.begin() as conn:
        conn.execute(text("ALTER TABLE history_away RENAME TO history"))
    assert ledger.complete(claim, {}, {})
    assert ledger.claim(worker(), 60).study_id == "2"


def test_the_heartbeat_thread_shares_the_hot_connection(ledger: Ledger) -> None:
    ledger.add_studies([StudyRow("1")])
    claim = ledger.claim(worker(), 60)
    beats: list[Any] = []
    thread = threading.Thread(target=lambda: beats.append(ledger.heartbeat(claim, 60)))
    thread.start()
    thread.join()
    assert beats == [True]
    assert ledger.complete(claim, {}, {})


def _child_claims(ledger: Ledger, queue: "multiprocessing.Queue[str]") -> None:
    claim = ledger.claim(worker(2), 60)
    ledger.complete(claim, {}, {})
    queue.put(claim.study_id)


def test_a_forked_child_opens_its_own_connection(ledger: Ledger) -> None:
    ledger.add_studies([StudyRow("1"), StudyRow("2"), StudyRow("3")])
    first = ledger.claim(worker(), 60)          # the parent's hot connection is open now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_claims, args=(ledger, queue))
    child.start()
    assert queue.get(timeout=60) == "2"
    child.join(timeout=30)
    assert child.exitcode == 0
    assert ledger.complete(first, {}, {})
    assert ledger.claim(worker(), 60).study_id == "3"
    assert ledger.summary()["states"]["done"] == 2


def _schema(ledger: Ledger) -> list[tuple[str, str, str]]:
    with ledger.engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(text(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND sql IS NOT NULL")))


def _traced(ledger: Ledger) -> list[str]:
    """The SQL that the ledger's (new) connections run from now on."""
    from sqlalchemy import event

    statements: list[str] = []
    event.listen(ledger.engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(statements.append))
    ledger._hot.close()
    ledger.engine.dispose()
    return statements


def _bulk_rows(first: int, n: int) -> list[StudyRow]:
    return [StudyRow(str(i), series_id=str(10 * i)) if i % 7 else
            StudyRow(str(i), skip_class="input.bad_id" if i % 2 else "input.no_series", skip_message=f"study {i}")
            for i in range(first, first + n)]


@pytest.mark.parametrize("before", [0, 5], ids=["new ledger", "ledger with studies"])
def test_a_bulk_add_keeps_the_counters_the_indexes_and_the_triggers(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch, before: int) -> None:
    """More than one chunk goes in without the per-row triggers (and into a new ledger without the indexes):
    afterwards the counters equal a full count, and the triggers and indexes are the ones there were."""
    from batchseg import ledger as ledger_module

    monkeypatch.setattr(ledger_module, "ADD_CHUNK", 8)
    if before:
        ledger.add_studies(_bulk_rows(1000, before))
    schema = _schema(ledger)
    statements = _traced(ledger)
    result = ledger.add_studies(_bulk_rows(0, 50))
    assert len(result.added) == 50
    assert any(s.startswith("DROP TRIGGER") for s in statements), "the bulk path ran"
    assert any(s.startswith("DROP INDEX") for s in statements) == (before == 0)
    assert _schema(ledger) == schema
    assert nonzero(ledger.counts()) == nonzero(recount(ledger))
    rows = _bulk_rows(1000, before) + _bulk_rows(0, 50)
    assert ledger.counts()["skipped:input.bad_id"] == sum(r.skip_class == "input.bad_id" for r in rows) > 0
    assert ledger.counts()["state:pending"] == sum(not r.skip_class for r in rows)
    # The triggers count again: a claim, a failure, one more study.
    ledger.fail(ledger.claim(worker(), 60), "input.bad_dicom", "bad")
    ledger.add_studies([StudyRow("99999")])
    assert nonzero(ledger.counts()) == nonzero(recount(ledger))
    assert [r["seq"] for r in ledger.studies()][-3:] == sorted(r["seq"] for r in ledger.studies())[-3:]


def test_a_bulk_add_that_fails_midway_leaves_the_ledger_as_it_was(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error after some chunks went in (a crash would do the same): nothing added, triggers and indexes there."""
    from batchseg import ledger as ledger_module

    monkeypatch.setattr(ledger_module, "ADD_CHUNK", 8)
    schema = _schema(ledger)

    def rows() -> Any:
        yield from _bulk_rows(0, 30)
        raise OSError("the dataset's disk went away")

    with pytest.raises(OSError):
        ledger.add_studies(rows())
    assert _schema(ledger) == schema
    assert ledger.study_ids() == set() and nonzero(ledger.counts()) == {}
    ledger.add_studies(_bulk_rows(0, 30))
    assert nonzero(ledger.counts()) == nonzero(recount(ledger))


# -- each study's attempt seconds (studies.attempt_seconds, kept by a trigger on the history) ---------------------

def summed_attempt_seconds(ledger: Ledger) -> dict[str, float | None]:
    """Each study's attempt seconds as its history gives them: the durations of its ended attempts, in order."""
    out: dict[str, float | None] = {sid: None for sid in ledger.study_ids()}
    for row in ledger.history():
        if row["event"] in ("done", "failed", "lost", "released") and row["duration"] is not None:
            out[row["study_id"]] = (out[row["study_id"]] or 0) + row["duration"]
    return out


def kept_attempt_seconds(ledger: Ledger) -> dict[str, float | None]:
    return {study["study_id"]: study["attempt_seconds"] for study in ledger.studies()}


def attempts_end_every_way(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way an attempt ends, on a clock the test sets: after each, the study's kept seconds are the sum of its
    ended attempts' claim-to-outcome seconds (None while none has ended), and so is the report's column."""
    from batchseg import ledger as ledger_module

    clock = [1000.0]
    monkeypatch.setattr(ledger_module.time, "time", lambda: clock[0])

    def at(t: float) -> None:
        clock[0] = t

    def seconds(study_id: str) -> float | None:
        return ledger.study(study_id)["attempt_seconds"]

    ledger.add_studies([StudyRow(str(i)) for i in range(1, 6)])
    assert kept_attempt_seconds(ledger) == {str(i): None for i in range(1, 6)}
    a = ledger.claim(worker(), 60)
    assert a.study_id == "1" and seconds("1") is None, "a claim alone ends no attempt"
    at(1002.5)
    assert ledger.fail(a, "segment.oom", "out of memory") == "pending" and seconds("1") == 2.5      # retryable
    at(1010)
    b = ledger.claim(worker(), 60)
    at(1014)
    assert ledger.complete(b, {}, {}) and seconds("2") == 4.0                                      # done
    assert not ledger.complete(a, {}, {}) and seconds("1") == 2.5, "a stale token adds nothing"
    at(1020)
    c = ledger.claim(worker(), 60)
    at(1021.25)
    assert ledger.release(c, "SIGUSR1") and seconds("3") == 1.25                                   # released
    at(1022)
    again = ledger.claim(worker(), 60)
    at(1025.25)
    assert again.study_id == "3", "a release keeps its place in the queue"
    assert ledger.complete(again, {}, {}) and seconds("3") == 4.5       # the released attempt's seconds count too
    at(1030)
    d = ledger.claim(worker(), -1)                                       # its lease runs out at once
    at(1036)
    e = ledger.claim(worker(2), 60)                                      # ... and this claim expires it (lost)
    assert (d.study_id, e.study_id) == ("4", "5") and seconds("4") == 6.0 and seconds("5") is None
    at(1040)
    assert ledger.mark_lost("5", e.token, "slurm says gone") == "pending" and seconds("5") == 4.0   # lost (Slurm)
    at(1050)
    again = ledger.claim(worker(), 60)
    at(1053)
    assert again.study_id == "1" and ledger.fail(again, "input.bad_dicom", "bad") == "failed"
    assert seconds("1") == 2.5 + 3.0                                     # a retry's seconds add to the first's
    assert ledger.retry_failed() == ["1"] and seconds("1") == 5.5, "retry-failed ends no attempt"
    at(1060)
    third = ledger.claim(worker(), 60)
    while third is not None and third.study_id != "1":
        third = ledger.claim(worker(), 60)
    at(1061)
    assert ledger.complete(third, {}, {}) and seconds("1") == 6.5
    assert kept_attempt_seconds(ledger) == summed_attempt_seconds(ledger)
    assert {r["study_id"]: r["attempt_seconds"] for r in ledger.report_rows()} == kept_attempt_seconds(ledger)


def test_attempt_seconds_follow_every_way_an_attempt_ends(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts_end_every_way(ledger, monkeypatch)


def test_hand_written_history_keeps_the_attempt_seconds_right(ledger: Ledger) -> None:
    """The trigger, not batchseg's code, keeps them: an outcome row any writer appends is counted."""
    exercise(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(text("INSERT INTO history (study_id, event, from_state, to_state, at, duration) "
                          "VALUES ('1001', 'done', 'running', 'done', 0, 7.5), "
                          "('1002', 'claimed', 'pending', 'running', 0, 3.0)"))
    assert kept_attempt_seconds(ledger) == summed_attempt_seconds(ledger)


def test_a_ledger_made_before_the_attempt_seconds_gets_them_from_its_history(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    ledger = Ledger(f"sqlite:///{path}", max_attempts=2)
    exercise(ledger)
    ledger.add_studies([StudyRow("never-claimed")])
    expected = summed_attempt_seconds(ledger)
    assert expected["never-claimed"] is None and sum(v is not None for v in expected.values()) >= 8
    ledger.close()
    raw = sqlite3.connect(path)   # as the ledger was before the column, its trigger and its meta key
    raw.execute("DROP TRIGGER attempt_seconds_history_insert")
    raw.execute("ALTER TABLE studies DROP COLUMN attempt_seconds")
    raw.execute("DELETE FROM meta WHERE key = 'attempt_seconds'")
    raw.commit()
    raw.close()
    reopened = Ledger(f"sqlite:///{path}")
    assert kept_attempt_seconds(reopened) == expected
    reopened.add_studies([StudyRow("new")])
    claim = reopened.claim(worker(), 60)
    assert reopened.complete(claim, {}, {}) and reopened.study(claim.study_id)["attempt_seconds"] is not None
    assert kept_attempt_seconds(reopened) == summed_attempt_seconds(reopened)
    reopened.close()


def test_a_bulk_add_keeps_the_attempt_seconds_trigger(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchseg import ledger as ledger_module

    monkeypatch.setattr(ledger_module, "ADD_CHUNK", 8)
    ledger.add_studies(_bulk_rows(0, 50))
    claim = ledger.claim(worker(), 60)
    assert ledger.fail(claim, "segment.oom", "oom") == "pending"
    assert ledger.study(claim.study_id)["attempt_seconds"] is not None
    assert kept_attempt_seconds(ledger) == summed_attempt_seconds(ledger)


@pytest.mark.parametrize("chunk", [8, 1000], ids=["bulk", "one chunk, through the triggers"])
def test_added_rows_hold_every_value_given_in_order_whatever_their_empty_columns(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """SQLite gets each run of rows with the same empty columns by its own INSERT (NULL in the SQL, not a bound
    None) and their history rows copied from them: every column of every row, and the rows' order (rowid, history
    id, seq), are what was given, whichever empty columns follow which."""
    from batchseg import ledger as ledger_module

    monkeypatch.setattr(ledger_module, "ADD_CHUNK", chunk)
    shapes = [dict(series_id="7", series_description="Sagittal T2/STIR", input_path="/d/x", selection_reason="r"),
              dict(series_id="8"), dict(input_path="/d/é\n"), dict(selection_reason="only", series_description=""),
              dict(skip_class="input.no_series", skip_message="study: no series"), dict(skip_class="input.bad_id"),
              dict(skip_message="a message without a class"), {}]
    rows = [StudyRow(f"s{i}", **shapes[(i * i + i // 3) % len(shapes)]) for i in range(60)]
    assert ledger.add_studies(rows).added == [r.study_id for r in rows]
    with ledger.reader.begin() as conn:
        got = conn.exec_driver_sql(
            "SELECT rowid, study_id, seq, series_id, series_description, selection_reason, input_path, state, attempts,"
            " error_class, error_message, added_at = updated_at FROM studies ORDER BY rowid").all()
        events = conn.exec_driver_sql(
            "SELECT h.id, h.study_id, h.event, h.from_state, h.to_state, h.error_class, h.message, h.at = s.added_at, "
            "h.token, h.host FROM history h JOIN studies s USING (study_id) ORDER BY h.id").all()
    assert [tuple(r) for r in got] == [
        (i + 1, r.study_id, i + 1, r.series_id, r.series_description, r.selection_reason, r.input_path,
         "skipped" if r.skip_class else "pending", 0, r.skip_class, r.skip_message, 1) for i, r in enumerate(rows)]
    assert [tuple(e) for e in events] == [
        (i + 1, r.study_id, "added", None, "skipped" if r.skip_class else "pending", r.skip_class, r.skip_message, 1,
         None, None) for i, r in enumerate(rows)]
    assert nonzero(ledger.counts()) == nonzero(recount(ledger))
