"""Checks shared by several test modules."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

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
