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


# Flags as words; None stays None, which the csv module writes as an empty cell (blank reads as NaN in pandas).
_FLAG = {None: None, True: "true", False: "false"}
_NO_LSTV = ("", None, None, None, None, None, None, None, None, None)
_NO_LEVELS = ("", None, None, None, None, None)


def _joined(items: list[Any] | tuple[Any, ...]) -> str:
    """A list's cell: its items as text, "; " between them ("" for none)."""
    try:
        return "; ".join(items)
    except TypeError:   # an item that is not text
        return "; ".join(map(str, items))


def _head_cells(s: StudyEntry) -> list[Any]:
    """One study's cells in CSV_FIELDS order up to the output paths, text not yet neutralised: flags as words,
    lists joined, None and numbers as they are (the csv module writes None empty and numbers as str() does;
    numbers never need neutralising: float() reads "-1.5" and "-inf" back). A list, not a dict: a million rows
    pass here."""
    lstv = s.lstv
    values = [s.study_id, s.series_id, s.state, s.attempts, s.error_class, s.error_message, s.log_path, s.seconds,
              s.attempt_seconds, _joined(s.attempt_errors), s.worker, s.segmenter, _FLAG[s.labels_anatomical]]
    if lstv is None:
        # Blank, not false, wherever nothing was assessed.
        values += _NO_LSTV
    else:
        values += (lstv.status, lstv.pattern, _FLAG[lstv.count_assessable], lstv.count_reason, lstv.lumbar_count,
                   _FLAG[lstv.l6_present], _FLAG[lstv.t13_present], _joined(lstv.candidates),
                   _joined(lstv.caveats), _joined(lstv.notes))
    levels = s.levels
    # The level check: shift in levels (-1, +1), distance along the spine's long axis in mm.
    if levels is None:
        values += _NO_LEVELS
    else:
        values += (levels.verdict, levels.points, levels.matched, levels.shift, levels.max_distance_mm,
                   levels.reason)
    values.append(_joined(s.vertebrae))
    values.append(_joined(s.problems))
    return values


def _neutralised_cells(cells: list[Any]) -> list[Any]:
    return [neutralised(c) if c.__class__ is str else c for c in cells]


# Where a written row's cell after the first may start like a formula: each follows a delimiter, a quote first
# when it is quoted. A row without a match (and a first cell that does not) has no cell to neutralise; testing
# each text cell instead was most of the row's time.
_FORMULA_CELL = re.compile(',"?[' + re.escape("".join(FORMULA_STARTS)) + "]").search
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
    write = csv.writer(SimpleNamespace(write=lines.append), lineterminator="\n").writerow
    # The csv module quotes a cell holding a character of its line end, not "\r" when that is "\n" alone: this
    # writer's rows (ending "\r\n", made to end "\n") quote it too.
    careful = csv.writer(SimpleNamespace(write=lines.append), lineterminator="\r\n").writerow
    for n, study in enumerate(entries, 1):
        outputs = study.outputs
        paths = _paths_text(outputs)
        cells = _head_cells(study)
        if paths is None:
            cells += map(outputs.get, OUTPUT_NAMES)
        write(cells)
        line = lines[-1]
        if _FORMULA_CELL(line) or "\r" in line or study.study_id.startswith(FORMULA_STARTS):
            # Rare (a negative number, say): the row again, each text cell neutralised.
            del lines[-1]
            careful(_neutralised_cells(cells))
            line = lines[-1] = lines[-1][:-2] + "\n"
        if paths is not None:
            lines[-1] = line[:-1] + paths
        if n % 256 == 0:
            yield "".join(lines)
            lines.clear()
    yield "".join(lines)
