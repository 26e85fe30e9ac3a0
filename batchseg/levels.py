"""The level check: the radiologists' annotated disc levels against the discs SPINEPS's labels name.

Each annotated point (annotations.py) is placed in world space through the geometry of the DICOM file
of its instance (dicom.instance_planes: found by the InstanceNumber tag, never by file name) and compared
with the discs of the study's ordered sequence (enumeration.py), named from their real neighbours:

* its nearest disc is the one closest ALONG THE SPINE'S LONG AXIS at that disc (the disc's `axis_world`),
  not in 3D: the canal point lies 15-25 mm posterior to the disc centre, discs lie 30-45 mm apart along
  the spine, so in 3D a neighbouring disc can be the closer one;
* `distance_3d_mm`: Euclidean distance, world RAS+ mm, from the point to that disc's centroid;
  `distance_long_axis_mm`: the same difference projected on that disc's long axis, absolute, mm;
* the names agree when the disc's name is the annotated level, or, for a disc at the edge of the field of
  view, when the part in view agrees (`above L2` is L1/L2, `below L5` with no sacrum in view is L5/S1);
* a point more than AT_DISC_MM along the axis (or NEAR_SPINE_MM in 3D) from every disc has no disc at its
  level (SPINEPS found none there, or the point is not where it says);
* `offset_levels`: the level SPINEPS's name gives the nearest disc minus the annotated level, on the
  annotators' scale (L1/L2 = 0 ... L5/S1 = 4). A disc whose name is none of the five (T12/L1, L5/L6, L6/S1,
  L4/S1) is numbered by counting discs from the nearest disc that has one: in a spine with L6, SPINEPS's L6/S1
  is level 5, so the annotators' L5/S1 there is offset +1.

Per study (`LevelCheck.to_json`, the metadata's `levels`): `verdict` agree (every placed point at a disc of
its name), shifted (every placed point at a disc, each one the same level away: -1 or +1, at least two
points), disagree, or not_available (no annotation file, no point for the study's series, no point placed, labels
not anatomical, no disc in the label map). `shift` is the offset that explains the disagreement: the common
one when shifted, else the +-1 offset a majority of the compared points share, else null.

A disagreement becomes an LSTV caveat and, when the spine's pattern is transitional or the shift is
consistent, an LSTV candidate (`lstv_with_levels`); both are marked `level check` so that a later
`batchseg levels` replaces them instead of adding twice.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .annotations import LEVELS, LevelPoint, StudyAnnotations
from .enumeration import SequenceEntry, SpineSequence

# A point further than this along the long axis from its nearest disc has no disc at its level: half the
# smallest lumbar disc spacing (30-45 mm between disc centres).
AT_DISC_MM = 15.0
# ... or further than this in 3D: the canal point is 15-25 mm posterior of the disc, plus a slice or two aside.
NEAR_SPINE_MM = 60.0
POINT_STATUSES = ("agree", "other_level", "no_disc_here", "not_placed")
TRANSITIONAL_PATTERNS = ("lumbarization", "thoracolumbar_t13", "eleven_thoracic", "four_lumbar")
# The LSTV candidate pattern of a consistent shift on a spine whose labels show no transitional pattern.
SHIFT_PATTERN = "level_shift"
# How the level check marks what it adds to the LSTV findings (caveats start with it; candidates carry it).
SOURCE = "level check"

DEFINITIONS = {
    "world_ras_mm": "the annotated pixel placed through its DICOM file (ImagePositionPatient + x * column spacing "
                    "along the row direction + y * row spacing along the column direction), world RAS+ mm: the "
                    "frame of centroid_world",
    "distance_3d_mm": "from the point to the nearest disc's centroid (whole disc label), Euclidean, mm",
    "distance_long_axis_mm": "the same difference projected on the spine's local long axis at that disc (the "
                             "sequence's axis_world), absolute, mm: what tells levels apart",
    "max_distance_mm": "the largest distance_long_axis_mm of the study's placed points, mm",
    "offset_levels": "level of SPINEPS's name for the nearest disc minus the annotated level (L1/L2 = 0 ... "
                     "L5/S1 = 4; other names counted in discs from the nearest disc with one of the five)",
    "shift": "the offset in levels that explains a disagreement: -1 (SPINEPS names the discs one level higher, "
             "i.e. more cranial, than the annotators), +1 (one level lower), null",
}


@dataclass
class PointResult:
    """One annotated point and what the check found for it."""

    level: str                                  # annotated
    condition: str
    instance_number: int
    x: float                                    # pixel column, as annotated
    y: float                                    # pixel row
    line: int                                   # line of the CSV file
    status: str                                 # POINT_STATUSES
    world_ras_mm: list[float] | None = None
    nearest_disc: str | None = None             # the sequence's name of the nearest disc
    nearest_label: int | None = None
    names_agree: bool | None = None
    distance_3d_mm: float | None = None
    distance_long_axis_mm: float | None = None
    offset_levels: int | None = None
    problem: str | None = None                  # not placed: why


@dataclass
class LevelCheck:
    """One study's level check: the metadata's `levels` object."""

    available: bool
    verdict: str                                # findings_words.VERDICTS
    points: int = 0                             # annotated points on the study's series
    placed: int = 0                             # of them, placed in world space
    matched: int = 0                            # of them, at a disc of the annotated name
    shift: int | None = None
    max_distance_mm: float | None = None
    reason: str = ""                            # one line: why not available, or what was found
    source: str = ""                            # the annotation file
    rows_skipped: int = 0                       # malformed rows of this study in the file
    details: list[PointResult] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "definitions": DEFINITIONS}


def not_available(reason: str, source: str = "", *, points: int = 0, rows_skipped: int = 0) -> LevelCheck:
    return LevelCheck(False, "not_available", points=points, reason=reason, source=source, rows_skipped=rows_skipped)


# -- the check of one study (placing is the I/O edge) ----------------------------------------------------

def check_study(annotations: StudyAnnotations | None, series_dir: Path | None, sequence: SpineSequence, *,
                series_uid: str | None = None) -> LevelCheck:
    """Place the study's points through its series' DICOM files and compare them with its sequence."""
    if annotations is None:
        return not_available("no level annotations were given to this run")
    if not annotations.available:
        return not_available(annotations.reason, annotations.source, rows_skipped=annotations.rows_skipped)
    placed = place_points(annotations.points, series_dir, series_uid=series_uid)
    check = compare(placed, sequence)
    check.source, check.rows_skipped = annotations.source, annotations.rows_skipped
    return check


def place_points(points: list[LevelPoint], series_dir: Path | None, *,
                 series_uid: str | None = None) -> list[tuple[LevelPoint, np.ndarray | None, str]]:
    """(point, world RAS+ mm or None, why not placed) for every point, through its instance's own file."""
    from .dicom import instance_planes
    from .errors import StudyError

    if series_dir is None:
        return [(p, None, "the series folder is unknown") for p in points]
    try:
        planes = instance_planes(series_dir, series_uid=series_uid)
    except StudyError as exc:
        return [(p, None, exc.message) for p in points]
    except OSError as exc:
        return [(p, None, f"series folder {series_dir} cannot be read: {exc.strerror or exc}") for p in points]
    out = []
    for p in points:
        why = planes.why_not(p.instance_number)
        if why:
            out.append((p, None, why))
            continue
        plane = planes.planes[p.instance_number]
        if not plane.holds(p.x, p.y):
            out.append((p, None, f"({p.x:g}, {p.y:g}) lies outside the {plane.cols} x {plane.rows} pixels of "
                                 f"instance {p.instance_number}"))
            continue
        out.append((p, plane.pixel_to_world(p.x, p.y), ""))
    return out


# -- comparing (pure) ------------------------------------------------------------------------------------

def compare(placed: list[tuple[LevelPoint, np.ndarray | None, str]], sequence: SpineSequence) -> LevelCheck:
    """The check from placed points and the sequence."""
    n = len(placed)
    if not sequence.labels_anatomical:
        return not_available("labels not anatomical: no labeling model, so no disc carries a level name",
                             points=n)
    discs = [e for e in sequence.entries if e.kind == "disc"]
    if not discs:
        return not_available("the label map holds no disc to compare with", points=n)
    numbers = disc_levels([e.name for e in discs])
    details = [_point_result(p, world, why, discs, numbers) for p, world, why in placed]
    return summarize_points(details)


def summarize_points(details: list[PointResult]) -> LevelCheck:
    """Verdict, shift and counts from the per-point results."""
    placed = [d for d in details if d.status != "not_placed"]
    if not placed:
        first = details[0].problem if details else "no point"
        return LevelCheck(False, "not_available", points=len(details), details=details,
                          reason=f"no annotated point could be placed: {first}")
    compared = [d for d in placed if d.status in ("agree", "other_level")]
    matched = sum(d.status == "agree" for d in placed)
    distances = [d.distance_long_axis_mm for d in placed if d.distance_long_axis_mm is not None]
    offsets = [d.offset_levels for d in compared if d.status == "other_level"]
    shift: int | None = None
    if matched == len(placed):
        verdict = "agree"
    elif (len(compared) == len(placed) >= 2 and all(d.status == "other_level" for d in compared)
          and len({d.offset_levels for d in compared}) == 1 and compared[0].offset_levels in (-1, 1)):
        verdict, shift = "shifted", compared[0].offset_levels
    else:
        verdict = "disagree"
        common = Counter(o for o in offsets if o in (-1, 1)).most_common(1)
        if common and common[0][1] > len(compared) / 2:
            shift = common[0][0]
    check = LevelCheck(True, verdict, points=len(details), placed=len(placed), matched=matched, shift=shift,
                       max_distance_mm=round(max(distances), 2) if distances else None, details=details)
    check.reason = _reason(check)
    return check


def _point_result(p: LevelPoint, world: np.ndarray | None, why: str, discs: list[SequenceEntry],
                  numbers: list[int | None]) -> PointResult:
    out = PointResult(p.level, p.condition, p.instance_number, p.x, p.y, p.line, "not_placed")
    if world is None:
        out.problem = why
        return out
    out.world_ras_mm = [round(float(v), 3) for v in world]
    along = [abs(float(np.dot(world - np.asarray(e.centroid_world), np.asarray(e.axis_world)))) for e in discs]
    best = int(np.argmin(along))
    disc = discs[best]
    out.nearest_disc, out.nearest_label = disc.name, disc.label
    out.distance_long_axis_mm = round(along[best], 2)
    out.distance_3d_mm = round(float(np.linalg.norm(world - np.asarray(disc.centroid_world))), 2)
    out.names_agree = names_agree(p.level, disc.name)
    if numbers[best] is not None:
        out.offset_levels = numbers[best] - LEVELS.index(p.level)
    if along[best] > AT_DISC_MM or out.distance_3d_mm > NEAR_SPINE_MM:
        out.status = "no_disc_here"
    else:
        out.status = "agree" if out.names_agree else "other_level"
    return out


def _parts(name: str) -> tuple[str | None, str | None]:
    """(vertebra above, vertebra below) of a sequence disc name; None for the side out of view."""
    if name.startswith("above "):
        return None, name[len("above "):]
    if name.startswith("below "):
        return name[len("below "):], None
    if name.count("/") == 1:
        above, below = name.split("/")
        return above, below
    return None, None


def names_agree(level: str, disc_name: str) -> bool:
    """Whether a sequence disc name is the annotated level (the side out of view cannot contradict it)."""
    above, below = _parts(disc_name)
    if above is None and below is None:
        return False
    want_above, want_below = level.split("/")
    return (above is None or above == want_above) and (below is None or below == want_below)


def rsna_level(disc_name: str) -> int | None:
    """The index in LEVELS of the one level a sequence disc name agrees with; None for none (or several)."""
    hits = [n for n, level in enumerate(LEVELS) if names_agree(level, disc_name)]
    return hits[0] if len(hits) == 1 else None


def disc_levels(names: list[str]) -> list[int | None]:
    """Each disc's level on the annotators' scale (L1/L2 = 0 ... L5/S1 = 4), discs top to bottom: from its
    name where the name is one of the five, else counted in discs from the nearest disc that has one (None
    when no disc has)."""
    own = [rsna_level(n) for n in names]
    anchors = [(k, v) for k, v in enumerate(own) if v is not None]
    out: list[int | None] = []
    for k, v in enumerate(own):
        if v is not None or not anchors:
            out.append(v)
            continue
        at, level = min(anchors, key=lambda a: (abs(a[0] - k), a[0]))
        out.append(level + (k - at))
    return out


def pairs_text(pairs: Iterable[tuple[str, str]]) -> str:
    """(SPINEPS's name, annotated level) pairs in words, the lowest annotated level first (the lumbosacral end
    is where transitional anatomy shows): "SPINEPS L4/L5 where the annotators marked L5/S1, SPINEPS L3/L4
    where they marked L4/L5"."""
    ordered = sorted(pairs, key=lambda p: -LEVELS.index(p[1]) if p[1] in LEVELS else 0)
    return ", ".join(f"SPINEPS {name} where {'the annotators' if n == 0 else 'they'} marked {level}"
                     for n, (name, level) in enumerate(ordered))


def _pairs(details: Iterable[PointResult]) -> str:
    return pairs_text((str(d.nearest_disc), d.level) for d in details)


def _shift_words(shift: int) -> str:
    return (f"one level {'higher (more cranial)' if shift < 0 else 'lower (more caudal)'} than the annotators' "
            f"(shift {shift:+d})")


def _reason(check: LevelCheck) -> str:
    """One line saying what the check found."""
    placed = [d for d in check.details if d.status != "not_placed"]
    text = f"{check.matched} of {len(placed)} placed point(s) at a disc of the annotated name"
    if check.max_distance_mm is not None:
        text += f"; largest long-axis distance {check.max_distance_mm:.1f} mm"
    if check.verdict == "shifted" and check.shift is not None:
        text = (f"SPINEPS's names run {_shift_words(check.shift)} at all {len(placed)} placed points: "
                + _pairs(placed) + f"; largest long-axis distance {check.max_distance_mm:.1f} mm")
    elif check.verdict == "disagree":
        other = [d for d in placed if d.status == "other_level"]
        missing = [d for d in placed if d.status == "no_disc_here"]
        if other:
            text += "; " + _pairs(other)
        for d in missing:
            text += (f"; no disc at the annotated {d.level}: the nearest ({d.nearest_disc}) is "
                     f"{d.distance_long_axis_mm:.0f} mm away along the spine")
    unplaced = len(check.details) - len(placed)
    if unplaced:
        first = next(d.problem for d in check.details if d.status == "not_placed")
        text += f"; {unplaced} point(s) not placed ({first})"
    return text


# -- the LSTV findings and the cohort ----------------------------------------------------------------

def lstv_with_levels(lstv: dict[str, Any] | None, levels: dict[str, Any]) -> dict[str, Any] | None:
    """The metadata's `lstv` object with the level check's caveat and candidate in place of any earlier ones."""
    if not isinstance(lstv, dict):
        return lstv
    caveats = [c for c in lstv.get("caveats") or [] if not (isinstance(c, str) and c.startswith(SOURCE + ":"))]
    candidates = [c for c in lstv.get("candidates") or []
                  if not (isinstance(c, dict) and c.get("source") == SOURCE)]
    verdict = levels.get("verdict")
    if verdict in ("shifted", "disagree"):
        caveats.append(f"{SOURCE}: {verdict}: {levels.get('reason')}")
        pattern = lstv.get("pattern")
        named_otherwise = [d for d in levels.get("details") or [] if d.get("status") == "other_level"]
        if named_otherwise and (pattern in TRANSITIONAL_PATTERNS or verdict == "shifted"):
            shift = levels.get("shift")
            if verdict == "shifted" and isinstance(shift, int):
                evidence = f"{SOURCE}: SPINEPS's names run {_shift_words(shift)} at every placed point: "
            else:
                evidence = (f"{SOURCE}: {len(named_otherwise)} of {levels.get('placed')} annotated discs named "
                            + (f"otherwise (most: shift {shift:+d}): " if isinstance(shift, int) else "otherwise: "))
            evidence += pairs_text((str(d.get("nearest_disc")), str(d.get("level"))) for d in named_otherwise)
            evidence += f"; SPINEPS's own pattern: {pattern}"
            if isinstance(lstv.get("lumbar_count"), int):
                evidence += f", {lstv['lumbar_count']} lumbar vertebrae"
            candidates.append({"pattern": pattern if pattern in TRANSITIONAL_PATTERNS else SHIFT_PATTERN,
                               "evidence": evidence, "source": SOURCE})
    return {**lstv, "caveats": caveats, "candidates": candidates}
