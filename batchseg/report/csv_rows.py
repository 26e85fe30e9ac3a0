"""The review report as CSV (`batchseg report --csv`): one row per study, for pandas and spreadsheets."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..files import write_atomic
from .model import OUTPUT_NAMES, Report, StudyEntry

# Columns of the per-study CSV, in order; researchers load it with pandas.
CSV_FIELDS = ("study_id", "series_id", "state", "attempts", "error_class", "error_message", "log_path",
              "seconds", "attempt_seconds", "attempt_errors", "worker", "segmenter", "labels_anatomical",
              "lstv_status", "pattern", "count_assessable", "count_reason", "lumbar_count", "l6_present",
              "t13_present", "candidates", "lstv_caveats", "lstv_notes",
              "levels_verdict", "levels_points", "levels_matched", "levels_shift", "levels_max_distance_mm",
              "levels_reason",
              "vertebrae", "problems", *OUTPUT_NAMES)


# A cell starting with one of these is a formula to a spreadsheet (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralised(text: str) -> str:
    """`text` with a leading apostrophe when a spreadsheet would run it as a formula (plain numbers stay).

    Error messages, ids and paths come from DICOM tags and file names, which anyone can write.
    Spreadsheets hide the apostrophe; pandas keeps it: `df[col].str.removeprefix("'")` restores the text.
    """
    if not text.startswith(FORMULA_STARTS):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return "'" + text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return neutralised("; ".join(str(v) for v in value))
    return neutralised(str(value))


def csv_row(s: StudyEntry) -> dict[str, str]:
    lstv = s.lstv
    row = {
        "study_id": s.study_id, "series_id": s.series_id, "state": s.state, "attempts": s.attempts,
        "error_class": s.error_class, "error_message": s.error_message, "log_path": s.log_path,
        "seconds": s.seconds, "attempt_seconds": s.attempt_seconds, "attempt_errors": s.attempt_errors,
        "worker": s.worker, "segmenter": s.segmenter, "labels_anatomical": s.labels_anatomical,
        # Blank, not false, wherever nothing was assessed: a blank cell reads as NaN in pandas.
        "lstv_status": lstv.status if lstv else "",
        "pattern": lstv.pattern if lstv else None,
        "count_assessable": lstv.count_assessable if lstv else None,
        "count_reason": lstv.count_reason if lstv else None,
        "lumbar_count": lstv.lumbar_count if lstv else None,
        "l6_present": lstv.l6_present if lstv else None,
        "t13_present": lstv.t13_present if lstv else None,
        "candidates": lstv.candidates if lstv else [],
        "lstv_caveats": lstv.caveats if lstv else [],
        "lstv_notes": lstv.notes if lstv else [],
        # The level check: shift in levels (-1, +1), distance along the spine's long axis in mm.
        "levels_verdict": s.levels.verdict if s.levels else "",
        "levels_points": s.levels.points if s.levels else None,
        "levels_matched": s.levels.matched if s.levels else None,
        "levels_shift": s.levels.shift if s.levels else None,
        "levels_max_distance_mm": s.levels.max_distance_mm if s.levels else None,
        "levels_reason": s.levels.reason if s.levels else None,
        "vertebrae": s.vertebrae, "problems": s.problems,
        **{name: s.outputs.get(name) for name in OUTPUT_NAMES},
    }
    return {k: _cell(v) for k, v in row.items()}


def render_csv(report: Report) -> Iterator[str]:
    """One row per study (CSV_FIELDS), in ledger order, as chunks of text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for n, study in enumerate(report.studies, 1):
        writer.writerow(csv_row(study))
        if n % 256 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def write_csv(report: Report, path: Path) -> Path:
    return write_atomic(path, render_csv(report))
