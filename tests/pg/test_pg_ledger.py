"""The same ledger contract on a real PostgreSQL (FOR UPDATE SKIP LOCKED claims)."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from batchseg.ledger import Ledger, StudyRow, WorkerInfo
from tests.helpers import assert_no_overlapping_claims, entries_both_ways

pytestmark = pytest.mark.pg


def test_state_machine_on_postgresql(pg_url: str) -> None:
    ledger = Ledger(pg_url, max_attempts=2)
    assert ledger.dialect == "postgresql"
    ledger.add_studies([StudyRow(str(2**40 + i), series_id=str(2**35)) for i in range(3)])
    who = WorkerInfo("node", 1, slurm_array_job_id="77", slurm_array_task_id="2")
    first = ledger.claim(who, 60)
    assert first.study_id == str(2**40) and first.series_id == str(2**35)
    assert ledger.fail(first, "segment.oom", "CUDA out of memory") == "pending"
    second = ledger.claim(who, 60)
    assert second.study_id == str(2**40 + 1), "a failed study goes to the back of the queue"
    stale = type(second)(**{**second.__dict__, "token": "stale"})
    assert not ledger.complete(stale, {}, {})
    assert ledger.complete(second, {"nifti": "x"}, {"total": 1.0})
    third = ledger.claim(who, -1)
    assert ledger.expire_leases() == [third.study_id]
    assert ledger.study(third.study_id)["error_class"] == "worker.lost"
    summary = ledger.summary()
    assert summary["states"]["done"] == 1 and summary["states"]["pending"] == 2
    assert ledger.history(second.study_id)[-1]["slurm_array_job_id"] == "77"
    ledger.close()


def _claimer(url: str, queue: "multiprocessing.Queue[list[str]]", pid: int) -> None:
    ledger = Ledger(url)
    got = []
    while (claim := ledger.claim(WorkerInfo("node", pid), 60)) is not None:
        got.append(claim.study_id)
        ledger.complete(claim, {}, {})
    queue.put(got)
    ledger.close()


def test_parallel_claims_never_double_claim_on_postgresql(pg_url: str) -> None:
    ledger = Ledger(pg_url)
    ledger.add_studies([StudyRow(str(i)) for i in range(400)])
    ctx = multiprocessing.get_context("spawn")  # a forked child must not inherit the parent's connections
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(pg_url, queue, p)) for p in range(8)]
    for proc in procs:
        proc.start()
    claimed = [sid for _ in procs for sid in queue.get(timeout=180)]
    for proc in procs:
        proc.join(timeout=30)
    assert sorted(map(int, claimed)) == list(range(400))
    assert_no_overlapping_claims(ledger.history())
    ledger.close()


def test_cli_runs_with_a_postgresql_ledger(pg_url: str, tmp_path: Path, synth_small: Path) -> None:
    from click.testing import CliRunner

    from batchseg.cli import cli

    runner = CliRunner()
    project = tmp_path / "p"
    result = runner.invoke(cli, ["init", "--project", str(project), "--dataset", str(synth_small),
                                 "--segmenter", "noop", "--db", pg_url])
    assert result.exit_code == 0, result.output
    assert "postgresql" in (project / "batchseg.toml").read_text()
    result = runner.invoke(cli, ["run", "--project", str(project), "--workers", "2"])
    status = runner.invoke(cli, ["status", "--project", str(project), "--json"])
    import json

    states = json.loads(status.output)["states"]
    assert states["done"] >= 1 and states["running"] == 0 and states["pending"] == 0
    # The report streams the studies through a server-side cursor, each done study's findings from its digest.
    both = entries_both_ways(project)
    assert len(both) == states["done"] and all(d is not None and d == f for d, f in both.values())
    result = runner.invoke(cli, ["report", "--project", str(project), "--csv", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert len(lines) == 1 + sum(states.values())
    # Read in three runs of the queue by three processes, each with its own connection: the same CSV.
    result = runner.invoke(cli, ["report", "--project", str(project), "--csv", str(tmp_path / "r3.csv"),
                                 "--processes", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r3.csv").read_bytes() == (tmp_path / "r.csv").read_bytes()


def test_a_postgresql_ledger_made_before_the_findings_digest_gets_its_column(pg_url: str) -> None:
    from sqlalchemy import text

    ledger = Ledger(pg_url)
    ledger.add_studies([StudyRow("1")])
    with ledger.engine.begin() as conn:
        conn.execute(text("ALTER TABLE studies DROP COLUMN findings"))
        conn.execute(text("DELETE FROM meta WHERE key = 'findings'"))
    ledger.close()
    reopened = Ledger(pg_url)
    claim = reopened.claim(WorkerInfo.from_environment({}), 60)
    assert claim is not None and reopened.complete(claim, {}, {}, '{"id": []}')
    assert reopened.study("1")["findings"] == {"id": []}
    reopened.close()


def test_counters_follow_every_transition_on_postgresql(pg_url: str) -> None:
    """PostgreSQL's triggers write deltas (no hot rows); claims fold them; readers add both up."""
    from sqlalchemy import text

    from tests.test_ledger_counts import exercise, nonzero, recount

    ledger = Ledger(pg_url, max_attempts=2)
    exercise(ledger)
    assert nonzero(ledger.counts()) == nonzero(recount(ledger))
    with ledger.engine.begin() as conn:
        left = conn.execute(text("SELECT count(*) FROM count_deltas")).scalar()
        conn.execute(text("UPDATE studies SET state = 'failed', error_class = 'internal' WHERE study_id = '1001'"))
    assert left <= 8, "each claim folds the deltas written since the one before"
    assert nonzero(ledger.counts()) == nonzero(recount(ledger))
    summary = ledger.summary(studies_per_group=1)
    assert summary["states"]["failed"] == 2 and all(len(g["studies"]) == 1 for g in summary["failures"])
    ledger.close()


def test_a_postgresql_ledger_made_before_the_counters_gets_them(pg_url: str) -> None:
    from sqlalchemy import text

    from tests.test_ledger_counts import exercise, nonzero, recount

    ledger = Ledger(pg_url, max_attempts=2)
    exercise(ledger)
    expected = nonzero(recount(ledger))
    with ledger.engine.begin() as conn:
        for name, table in (("counts_studies_insert", "studies"), ("counts_studies_update", "studies"),
                            ("counts_studies_delete", "studies"), ("counts_history_insert", "history")):
            conn.execute(text(f"DROP TRIGGER {name} ON {table}"))
        for name in ("ix_studies_seq", "ix_studies_problems", "ix_history_event_at"):
            conn.execute(text(f"DROP INDEX {name}"))
        conn.execute(text("DROP TABLE counts, count_deltas"))
        conn.execute(text("DELETE FROM meta WHERE key = 'counts'"))
    ledger.close()
    reopened = Ledger(pg_url)
    assert nonzero(reopened.counts()) == expected
    reopened.add_studies([StudyRow("5")])
    assert reopened.counts()["state:pending"] == 1
    reopened.close()


def test_attempt_seconds_follow_every_way_an_attempt_ends_on_postgresql(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_ledger_counts import attempts_end_every_way

    ledger = Ledger(pg_url, max_attempts=2)
    attempts_end_every_way(ledger, monkeypatch)
    ledger.close()


def test_a_postgresql_ledger_made_before_the_attempt_seconds_gets_them_from_its_history(pg_url: str) -> None:
    from sqlalchemy import text

    from tests.test_ledger_counts import exercise, kept_attempt_seconds, summed_attempt_seconds

    ledger = Ledger(pg_url, max_attempts=2)
    exercise(ledger)
    expected = summed_attempt_seconds(ledger)
    assert sum(v is not None for v in expected.values()) >= 8
    with ledger.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER attempt_seconds_history_insert ON history"))
        conn.execute(text("ALTER TABLE studies DROP COLUMN attempt_seconds"))
        conn.execute(text("DELETE FROM meta WHERE key = 'attempt_seconds'"))
    ledger.close()
    reopened = Ledger(pg_url)
    assert kept_attempt_seconds(reopened) == expected
    reopened.add_studies([StudyRow(str(i)) for i in range(5)])   # COPY: `added` rows change no seconds
    claim = reopened.claim(WorkerInfo("node", 1), 60)
    assert reopened.complete(claim, {}, {}) and reopened.study(claim.study_id)["attempt_seconds"] is not None
    with reopened.engine.begin() as conn:   # any writer's outcome row counts
        conn.execute(text("INSERT INTO history (study_id, event, from_state, to_state, at, duration) "
                          "VALUES ('0', 'failed', 'running', 'pending', 0, 2.5)"))
    assert kept_attempt_seconds(reopened) == summed_attempt_seconds(reopened)
    reopened.close()
