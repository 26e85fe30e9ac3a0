"""Checks shared by several test modules."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable

ENDS = {"done", "failed", "lost", "released"}


def claim_intervals(events: list[dict[str, Any]]) -> dict[str, list[tuple[float, float, str]]]:
    """study -> [(claimed_at, ended_at, token)] from the append-only history."""
    opened: dict[str, dict[str, Any]] = {}
    intervals: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for event in events:
        if event["event"] == "claimed":
            opened[event["token"]] = event
        elif event["event"] in ENDS and event["token"] in opened:
            start = opened.pop(event["token"])
            intervals[event["study_id"]].append((start["at"], event["at"], event["token"]))
    for token, start in opened.items():
        intervals[start["study_id"]].append((start["at"], float("inf"), token))
    return intervals


def assert_no_overlapping_claims(events: list[dict[str, Any]]) -> None:
    """No study was ever held by two live claims at once."""
    for study, spans in claim_intervals(events).items():
        spans.sort()
        for (_, end, _), (start, _, _) in zip(spans, spans[1:]):
            assert start >= end, f"study {study} was held by two claims at once"


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "") -> Any:
    """Poll `predicate()` until it returns something truthy (and return that); fail after `timeout` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")


def kill_workers_at_the_tail(project: Any, db_url: str, studies: int) -> None:
    """`batchseg run` over `studies` studies; SIGKILL the workers holding the last ones; check the end.

    The leases are long (set by the caller), so only `run` noticing its dead workers can finish
    the queue in time: every study must end done and none running.
    """
    import os
    import signal
    import subprocess
    import sys

    from batchseg.ledger import Ledger

    run = subprocess.Popen([sys.executable, "-m", "batchseg", "run", "--project", str(project), "--workers", "3"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ledger = Ledger(db_url)
    try:
        def tail() -> list[Any]:
            states = ledger.summary()["states"]
            return ledger.running() if states["pending"] == 0 and states["running"] else []

        held = wait_until(tail, 120, what="the last studies to be claimed")
        victims = {a.worker.pid: a.study_id for a in held}
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        output, _ = run.communicate(timeout=180)
        summary = ledger.summary()
        assert summary["states"]["done"] == studies and summary["states"]["running"] == 0, (summary, output)
        assert run.returncode == 0, output
        for pid, study in victims.items():
            events = [e for e in ledger.history(study) if e["event"] == "lost"]
            assert events and f"pid {pid} killed by SIGKILL" in events[0]["message"], events
            assert f"worker pid {pid} killed by SIGKILL holding study {study}" in output
    finally:
        if run.poll() is None:
            run.kill()
        ledger.close()


def entries_both_ways(project: Any) -> dict[str, tuple[Any, Any]]:
    """Each done study's report entry from the ledger's findings digest (None where the report would not
    believe the digest) and from its files."""
    from batchseg.config import load_config
    from batchseg.ledger import Ledger
    from batchseg.outputs import files_from_digest, read_study_files
    from batchseg.report.model import study_entry

    ledger = Ledger.for_config(load_config(project))
    results = project / "results"
    both = {}
    for row in ledger.report_rows():
        if row["state"] == "done":
            digested = files_from_digest(results, row["study_id"], row["findings"])
            both[row["study_id"]] = (study_entry(row, digested) if digested else None,
                                     study_entry(row, read_study_files(results, row["study_id"])))
    ledger.close()
    return both
