"""RSNA's level annotations: `<split>_label_coordinates.csv`, read and validated, one study's points.

The file (docs/architecture.md, "Domain facts") has the columns
`study_id,series_id,instance_number,condition,level,x,y`: radiologists' points, `x` the pixel column and `y`
the pixel row of the image whose InstanceNumber tag is `instance_number`. On the Sagittal T2/STIR series the
condition is `Spinal Canal Stenosis`, one point per level `L1/L2` ... `L5/S1`, in the spinal canal at that
disc. A study's points are the rows on ITS chosen series (other series, Sagittal T1 and axial, carry other
conditions and are left out); a row on that series under another condition is kept when it names a level.

The file is optional: without it the level check is "not available", never an error. A malformed row (a bad
id, a level that is not one of the five, a coordinate that is not a finite number) is skipped and counted,
never a crash; so is a file that cannot be read or lacks a column (then every study is "not available", with
the reason).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import is_valid_id, printable_id

COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
# The five disc levels RSNA annotates, top to bottom; a level's index is its number on the annotators' scale.
LEVELS = ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")
CANAL_CONDITION = "Spinal Canal Stenosis"
# How many skipped-row messages are kept (per study, and for the whole file); the counts are always whole.
KEEP_MESSAGES = 5


def annotation_csv(dataset: Path, split: str) -> Path:
    """Where the RSNA layout keeps the level annotations of a split."""
    return Path(dataset) / f"{split}_label_coordinates.csv"


@dataclass(frozen=True)
class LevelPoint:
    """One annotated point: pixel (x = column, y = row) on the image with InstanceNumber `instance_number`."""

    study_id: str
    series_id: str
    instance_number: int
    condition: str
    level: str          # one of LEVELS
    x: float            # pixel column (0 = the first column's centre)
    y: float            # pixel row
    line: int           # line of the CSV file (the header is line 1)


@dataclass
class StudyAnnotations:
    """One study's points on its series, or why the check has none to work with."""

    available: bool
    source: str                     # the file (or where it was looked for)
    reason: str = ""                # why not available; "" when available
    points: list[LevelPoint] = field(default_factory=list)
    rows_skipped: int = 0           # rows of this study skipped as malformed
    skipped: list[str] = field(default_factory=list)   # the first KEEP_MESSAGES of them

    @classmethod
    def missing(cls, source: str, reason: str) -> StudyAnnotations:
        return cls(False, source, reason)


@dataclass
class AnnotationTable:
    """The whole file, read once: every good row by study, the skipped rows counted."""

    path: Path
    error: str = ""                                        # the file as a whole is unusable ("" when read)
    by_study: dict[str, list[LevelPoint]] = field(default_factory=dict)
    skipped_by_study: dict[str, list[str]] = field(default_factory=dict)   # study id -> messages (all)
    rows: int = 0                                          # data rows read
    rows_skipped: int = 0
    skipped: list[str] = field(default_factory=list)       # the first KEEP_MESSAGES messages

    @property
    def usable(self) -> bool:
        return not self.error

    def warnings(self) -> list[str]:
        """Lines for people: the file's problem, or how many rows were skipped and the first few why."""
        if self.error:
            return [self.error]
        if not self.rows_skipped:
            return []
        return [f"{self.path.name}: {self.rows_skipped} of {self.rows} rows skipped", *self.skipped]

    def for_study(self, study_id: str, series_id: str | None) -> StudyAnnotations:
        """The points of `study_id` on its series `series_id`, or why there are none."""
        source = str(self.path)
        if self.error:
            return StudyAnnotations.missing(source, self.error)
        skipped = self.skipped_by_study.get(study_id, [])
        mine = self.by_study.get(study_id, [])
        points = [p for p in mine if p.series_id == series_id]
        if points:
            return StudyAnnotations(True, source, "", points, len(skipped), skipped[:KEEP_MESSAGES])
        if mine:
            others = ", ".join(sorted({p.series_id for p in mine}))
            reason = (f"{self.path.name} has {len(mine)} point(s) for study {study_id}, none on its series "
                      f"{series_id} (they are on series {others})")
        elif skipped:
            reason = f"{self.path.name}: every row of study {study_id} was skipped ({len(skipped)})"
        else:
            reason = f"{self.path.name} has no point for study {study_id}"
        return StudyAnnotations(False, source, reason, [], len(skipped), skipped[:KEEP_MESSAGES])


def read_project_annotations(dataset: Path | None, split: str) -> AnnotationTable:
    """The annotations of a project's dataset and split (unusable, with the reason, when it names no dataset)."""
    if dataset is None:
        return AnnotationTable(Path(f"{split}_label_coordinates.csv"),
                               error="the project names no dataset folder: the level check is not available")
    return read_annotations(annotation_csv(dataset, split))


def read_annotations(path: Path) -> AnnotationTable:
    """Read and validate the whole file; absent, unreadable or without its columns it comes back unusable
    (`error` says why), never raising."""
    path = Path(path)
    if not path.is_file():
        return AnnotationTable(path, error=f"no {path.name} in the dataset: the level check is not available")
    table = AnnotationTable(path)
    try:
        # utf-8-sig: a byte order mark (Excel) would hide the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                table.error = f"{path.name} lacks column(s) {', '.join(missing)}: the level check is not available"
                return table
            seen: dict[tuple, int] = {}
            for line, row in enumerate(reader, start=2):
                table.rows += 1
                point, problem = _point(row, line)
                if point is not None:
                    key = (point.study_id, point.series_id, point.instance_number, point.condition, point.level,
                           point.x, point.y)
                    if key in seen:
                        point, problem = None, f"line {line}: the same point as line {seen[key]}"
                    else:
                        seen[key] = line
                if point is None:
                    _skip(table, (row.get("study_id") or "").strip(), f"{path.name} {problem}")
                    continue
                table.by_study.setdefault(point.study_id, []).append(point)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return AnnotationTable(path, error=f"{path.name} cannot be read ({type(exc).__name__}: {exc}): the level "
                                           "check is not available")
    return table


def _skip(table: AnnotationTable, study: str, message: str) -> None:
    table.rows_skipped += 1
    if len(table.skipped) < KEEP_MESSAGES:
        table.skipped.append(message)
    if is_valid_id(study):
        table.skipped_by_study.setdefault(study, []).append(message)


def _point(row: dict[str, str | None], line: int) -> tuple[LevelPoint | None, str]:
    """A validated point, or None and why the row is skipped."""
    cell = {c: (row.get(c) or "").strip() for c in COLUMNS}
    for key in ("study_id", "series_id"):
        if not is_valid_id(cell[key]):
            return None, f"line {line}: {key} {printable_id(cell[key])!r} is not a plain decimal id"
    try:
        instance = int(cell["instance_number"])
    except ValueError:
        return None, f"line {line}: instance_number {printable_id(cell['instance_number'])!r} is not a whole number"
    level = cell["level"].upper()
    if level not in LEVELS:
        return None, f"line {line}: level {printable_id(cell['level'])!r} is none of {', '.join(LEVELS)}"
    coords = []
    for key in ("x", "y"):
        try:
            value = float(cell[key])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            return None, f"line {line}: {key} {printable_id(cell[key])!r} is not a finite number"
        coords.append(value)
    return LevelPoint(cell["study_id"], cell["series_id"], instance, cell["condition"], level, coords[0], coords[1],
                      line), ""


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of the file, None when absent: tells a worker its cached table is stale."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
