"""The review report as CSV (`batchseg report --csv`): one row per study, for pandas and spreadsheets."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..files import write_atomic
from ..outputs import OUTPUT_NAMES
from .model import StudyEntry

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
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return neutralised("; ".join(str(v) for v in value))
    return neutralised(str(value))


def _list_cell(value: list[Any] | tuple[Any, ...]) -> str:
    return neutralised("; ".join(map(str, value))) if value else ""


# Cells the csv module writes as they are: None as an empty cell, numbers as str() does (numbers never need
# neutralising: float() reads "-1.5" and "-inf" back).
_AS_THEY_ARE = frozenset((type(None), int, float))
# _cell by the value's exact class, without a Python call where none is needed: the flags are fixed words.
_CELL_OF = {bool: {True: "true", False: "false"}.__getitem__, list: _list_cell, tuple: _list_cell}
_NO_LSTV = ("", None, None, None, None, None, None, None, None, None)
_NO_LEVELS = ("", None, None, None, None, None)
_NO_OUTPUTS = (None,) * len(OUTPUT_NAMES)


def csv_values(s: StudyEntry) -> list[Any]:
    """One study's cells in CSV_FIELDS order (a list, not a dict: a million rows are written through here)."""
    lstv = s.lstv
    outputs = s.outputs
    cells = [s.study_id, s.series_id, s.state, s.attempts, s.error_class, s.error_message, s.log_path, s.seconds,
             s.attempt_seconds, s.attempt_errors, s.worker, s.segmenter, s.labels_anatomical]
    if lstv is None:
        # Blank, not false, wherever nothing was assessed: a blank cell reads as NaN in pandas.
        cells += _NO_LSTV
    else:
        cells += (lstv.status, lstv.pattern, lstv.count_assessable, lstv.count_reason, lstv.lumbar_count,
                  lstv.l6_present, lstv.t13_present, lstv.candidates, lstv.caveats, lstv.notes)
    levels = s.levels
    # The level check: shift in levels (-1, +1), distance along the spine's long axis in mm.
    if levels is None:
        cells += _NO_LEVELS
    else:
        cells += (levels.verdict, levels.points, levels.matched, levels.shift, levels.max_distance_mm, levels.reason)
    cells.append(s.vertebrae)
    cells.append(s.problems)
    cells += map(outputs.get, OUTPUT_NAMES) if outputs else _NO_OUTPUTS
    # Plain text (most cells) and numbers without a call; the rest through _CELL_OF: a million rows pass here.
    cell_of, as_they_are = _CELL_OF.get, _AS_THEY_ARE
    return [v if (v.__class__ is str and not v.startswith(FORMULA_STARTS)) or v.__class__ in as_they_are
            else cell_of(v.__class__, _cell)(v) for v in cells]


def render_csv(entries: Iterable[StudyEntry]) -> Iterator[str]:
    """One row per study (CSV_FIELDS), in the order given (ledger order), as chunks of text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for n, study in enumerate(entries, 1):
        writer.writerow(csv_values(study))
        if n % 256 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def write_csv(entries: Iterable[StudyEntry], path: Path) -> Path:
    """The CSV at `path`, written as the entries come (a stream of a million studies needs no more memory)."""
    return write_atomic(path, render_csv(entries))
