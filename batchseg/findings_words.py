"""The words a study's metadata uses for its findings: the LSTV patterns (lstv.py) and the level check's verdicts
(levels.py), and the cohort's count of verdicts. lstv.py and levels.py write these words (test_lstv holds every
pattern to PATTERNS) and the report reads them; kept apart from that code so that the report needs no numpy."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PATTERNS = ("normal", "lumbarization", "thoracolumbar_t13", "eleven_thoracic", "four_lumbar", "irregular",
            "not_assessable")
VERDICTS = ("agree", "shifted", "disagree", "not_available")


def summarize(verdicts: Iterable[str | None]) -> dict[str, Any]:
    """Counts per verdict and the agreement rate over the studies that could be checked.

    A study without a check (older outputs: None) counts as `not_checked`.
    """
    counts = {v: 0 for v in (*VERDICTS, "not_checked")}
    for v in verdicts:
        counts[v if v in VERDICTS else "not_checked"] += 1
    checked = counts["agree"] + counts["shifted"] + counts["disagree"]
    return {"studies": sum(counts.values()), "verdicts": counts, "checked": checked,
            "agreement_rate": round(counts["agree"] / checked, 4) if checked else None}
