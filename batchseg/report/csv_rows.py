"""The review report as CSV (`batchseg report --csv`): one row per study, for pandas and spreadsheets."""
from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

from ..outputs import OUTPUT_NAMES, OutputPaths
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


# None is a cell the csv module writes as it is (empty), and so are numbers, as str() does (numbers never need
# neutralising: float() reads "-1.5" and "-inf" back).
_NONE = type(None)
_NO_LSTV = ("", None, None, None, None, None, None, None, None, None)
_NO_LEVELS = ("", None, None, None, None, None)
_NO_OUTPUTS = (None,) * len(OUTPUT_NAMES)


def _head_values(s: StudyEntry) -> list[Any]:
    """One study's values in CSV_FIELDS order up to the output paths (a list, not a dict: a million rows pass)."""
    lstv = s.lstv
    values = [s.study_id, s.series_id, s.state, s.attempts, s.error_class, s.error_message, s.log_path, s.seconds,
              s.attempt_seconds, s.attempt_errors, s.worker, s.segmenter, s.labels_anatomical]
    if lstv is None:
        # Blank, not false, wherever nothing was assessed: a blank cell reads as NaN in pandas.
        values += _NO_LSTV
    else:
        values += (lstv.status, lstv.pattern, lstv.count_assessable, lstv.count_reason, lstv.lumbar_count,
                   lstv.l6_present, lstv.t13_present, lstv.candidates, lstv.caveats, lstv.notes)
    levels = s.levels
    # The level check: shift in levels (-1, +1), distance along the spine's long axis in mm.
    if levels is None:
        values += _NO_LEVELS
    else:
        values += (levels.verdict, levels.points, levels.matched, levels.shift, levels.max_distance_mm,
                   levels.reason)
    values.append(s.vertebrae)
    values.append(s.problems)
    return values


def _cells(values: list[Any]) -> list[Any]:
    """Values as the csv module is to write them (what _cell makes of each): flags as words, lists joined, text
    neutralised."""
    # A million rows of 31 values pass here: the usual classes, most frequent first, without a call where none
    # is needed (None and numbers as they are, plain text, empty lists, flags); the rest through _cell.
    return [v if (c := v.__class__) is _NONE or c is int or c is float
            else (v if not v.startswith(FORMULA_STARTS) else neutralised(v)) if c is str
            else (_list_cell(v) if v else "") if c is list
            else ("true" if v else "false") if c is bool
            else _cell(v) for v in values]


def csv_values(s: StudyEntry) -> list[Any]:
    """One study's cells in CSV_FIELDS order."""
    outputs = s.outputs
    return _cells(_head_values(s) + (list(map(outputs.get, OUTPUT_NAMES)) if outputs else list(_NO_OUTPUTS)))


# A cell holding one of these is quoted by the csv module (the delimiter, the quote, a line end).
_QUOTED = re.compile('[,"\r\n]').search
_NO_PATHS_TEXT = "," * len(OUTPUT_NAMES) + "\n"
# id(template), names -> (template, the text around the study id in those output path cells, or None).
_PATHS_PIECES: dict[tuple[int, tuple[str, ...]], tuple[Any, list[str] | None]] = {}


def _paths_pieces(template: dict[str, tuple[str, str]], names: tuple[str, ...]) -> list[str] | None:
    """The text of a row's output path cells around the study id ("," before each cell, the line end after
    the last): the id joins them into the cells. None where the csv module would quote a folder or a file
    name's rest, or a path would start like a formula."""
    pieces, text = [], ""
    for name in OUTPUT_NAMES:
        if name not in names:
            text += ","
            continue
        folder, rest = template[name]
        if _QUOTED(folder + rest) or folder.startswith(FORMULA_STARTS):
            return None
        pieces.append(text + "," + folder)
        text = rest
    pieces.append(text + "\n")
    return pieces


def _paths_text(outputs: Any) -> str | None:
    """A row's output path cells as CSV text ("," before each, the line end after), written past the csv
    module (nine paths were two thirds of its time), or None where the csv module is to write them."""
    if not outputs:
        return _NO_PATHS_TEXT
    if outputs.__class__ is not OutputPaths:
        return None
    template, study_id, names = outputs.template, outputs.study_id, outputs.names
    key = (id(template), names)
    known = _PATHS_PIECES.get(key)
    if known is None:
        # The template is kept with its pieces: while it lives, no other object has its id.
        known = _PATHS_PIECES[key] = (template, _paths_pieces(template, names))
    pieces = known[1]
    return None if pieces is None or _QUOTED(study_id) else study_id.join(pieces)


def csv_header() -> str:
    """The CSV's first line: the column names (CSV_FIELDS)."""
    return ",".join(CSV_FIELDS) + "\n"


def render_csv(entries: Iterable[StudyEntry]) -> Iterator[str]:
    """One row per study (CSV_FIELDS), in the order given (ledger order), as chunks of text; no header."""
    lines: list[str] = []
    writer = csv.writer(SimpleNamespace(write=lines.append), lineterminator="\n")
    for n, study in enumerate(entries, 1):
        paths = _paths_text(study.outputs)
        if paths is None:
            writer.writerow(csv_values(study))
        else:
            writer.writerow(_cells(_head_values(study)))
            lines[-1] = lines[-1][:-1] + paths
        if n % 256 == 0:
            yield "".join(lines)
            lines.clear()
    yield "".join(lines)
