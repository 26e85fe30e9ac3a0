"""levels.py and annotations.py: reading RSNA's level points, comparing them with the sequence, the verdicts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batchseg.annotations import LEVELS, LevelPoint, read_annotations, read_project_annotations
from batchseg.enumeration import SequenceEntry, SpineSequence
from batchseg.findings_words import summarize
from batchseg.levels import AT_DISC_MM, SHIFT_PATTERN, SOURCE, compare, disc_levels, lstv_with_levels, names_agree
from batchseg.measures import measure

HEADER = "study_id,series_id,instance_number,condition,level,x,y\n"
DOWN = (0.0, 0.0, -1.0)   # RAS+: caudal


# ---------------------------------------------------------------- annotations.py


def _write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_absent_file_is_not_available_never_an_error(tmp_path: Path) -> None:
    table = read_annotations(tmp_path / "train_label_coordinates.csv")
    assert not table.usable and "no train_label_coordinates.csv" in table.error
    study = table.for_study("123", "456")
    assert not study.available and "no train_label_coordinates.csv" in study.reason
    none = read_project_annotations(None, "train")
    assert not none.usable and "names no dataset folder" in none.error


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", [
        "1,10,3,Spinal Canal Stenosis,L1/L2,100.5,200.25",
        "1,10,3,Spinal Canal Stenosis,l2/l3,101,210",             # lower case: the same level
        "1,10,3,Spinal Canal Stenosis,L6/S1,101,220",             # no RSNA level
        "1,10,x3,Spinal Canal Stenosis,L3/L4,101,230",            # instance not a whole number
        "1,10,3,Spinal Canal Stenosis,L4/L5,nan,240",             # not a finite number
        "1;2,10,3,Spinal Canal Stenosis,L4/L5,1,240",             # bad study id
        "1,10,3,Spinal Canal Stenosis,L1/L2,100.5,200.25",        # the same point again
        "1,10,4,Left Neural Foraminal Narrowing,L5/S1,90,250",     # another condition on the series: kept
        "1,11,2,Left Neural Foraminal Narrowing,L5/S1,90,250",     # another series: left out for series 10
        "2,20,7,Spinal Canal Stenosis,L5/S1,1e400,3",              # inf
    ])
    table = read_annotations(path)
    assert table.usable and table.rows == 10 and table.rows_skipped == 6
    assert len(table.skipped) == 5 and any("L6/S1" in m for m in table.skipped)
    one = table.for_study("1", "10")
    assert one.available and [p.level for p in one.points] == ["L1/L2", "L2/L3", "L5/S1"]
    assert one.points[0] == LevelPoint("1", "10", 3, "Spinal Canal Stenosis", "L1/L2", 100.5, 200.25, 2)
    assert one.rows_skipped == 4          # its own bad rows (the bad-id row belongs to no study)
    other = table.for_study("1", "99")
    assert not other.available and "none on its series 99" in other.reason and "10, 11" in other.reason
    two = table.for_study("2", "20")
    assert not two.available and "every row of study 2 was skipped" in two.reason
    assert "no point for study 3" in table.for_study("3", "30").reason
    assert table.warnings()[0] == "c.csv: 6 of 10 rows skipped"


def test_a_file_without_its_columns_or_unreadable_is_not_available(tmp_path: Path) -> None:
    table = read_annotations(_write(tmp_path / "c.csv", ["1,10,3,L1/L2,1,2"],
                                    header="study_id,series_id,instance_number,level,x,y\n"))
    assert not table.usable and "lacks column(s) condition" in table.error
    assert not table.for_study("1", "10").available
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"study_id,series_id\n\xff\xfe\x00garbage")
    assert "cannot be read" in read_annotations(bad).error
    # Excel's byte order mark does not hide the first column.
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufeff" + HEADER + "1,10,3,Spinal Canal Stenosis,L1/L2,1,2\n", encoding="utf-8")
    assert read_annotations(bom).for_study("1", "10").available


# ---------------------------------------------------------------- names and levels


@pytest.mark.parametrize("level,disc,agree", [
    ("L1/L2", "L1/L2", True), ("L1/L2", "above L2", True), ("L5/S1", "below L5", True),
    ("L5/S1", "L5/L6", False), ("L5/S1", "L6/S1", False), ("L4/L5", "L4/S1", False), ("L4/L5", "above L2", False),
    ("L1/L2", "T12/L1", False), ("L1/L2", "disc above the top vertebra", False),
])
def test_names_agree_on_the_part_in_view(level: str, disc: str, agree: bool) -> None:
    assert names_agree(level, disc) is agree


@pytest.mark.parametrize("names,levels", [
    (["T11/T12", "T12/L1", "L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"], [-2, -1, 0, 1, 2, 3, 4]),
    # An L6 spine: L5/L6 and L6/S1 are counted from L4/L5, so SPINEPS's L6/S1 is level 5.
    (["T12/L1", "L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/L6", "L6/S1"], [-1, 0, 1, 2, 3, 4, 5]),
    # Four lumbar: L4/S1 is the fourth lumbar level.
    (["T12/L1", "L1/L2", "L2/L3", "L3/L4", "L4/S1"], [-1, 0, 1, 2, 3]),
    # T13 and eleven thoracic: the disc above L1 is level -1 either way.
    (["T12/T13", "T13/L1", "L1/L2"], [-2, -1, 0]),
    (["T10/T11", "T11/L1", "L1/L2"], [-2, -1, 0]),
    (["above L2", "L2/L3"], [0, 1]),
    (["T10/T11", "T11/T12"], [None, None]),
])
def test_disc_levels_count_from_the_named_discs(names: list[str], levels: list) -> None:
    assert disc_levels(names) == levels


# ---------------------------------------------------------------- comparing with a sequence


def _sequence(discs: list[tuple[str, float, float]], anatomical: bool = True) -> SpineSequence:
    """Discs (name, z of the centroid, y of the centroid) on a spine running down world -z."""
    entries = [SequenceEntry(label=120 + n, kind="disc", name=name, piece=None, point="whole",
                             centroid_voxel=(0.0, 0.0, 0.0), centroid_world=(0.0, y, z), volume_voxels=100,
                             position_mm=-z, axis_world=DOWN) for n, (name, z, y) in enumerate(discs)]
    return SpineSequence(entries, DOWN, anatomical)


def _normal(offset_z: float = 0.0) -> SpineSequence:
    names = ["T12/L1", *LEVELS]
    return _sequence([(name, offset_z - 36.0 * n, 0.0) for n, name in enumerate(names)])


def _placed(levels: list[str], z_of: dict[str, float], posterior: float = 20.0) -> list:
    """Canal points: `posterior` mm behind the disc (RAS+ y is anterior, so -y), at the z given per level."""
    return [(LevelPoint("1", "10", 5, "Spinal Canal Stenosis", lv, 1.0, 2.0, n + 2),
             np.array([0.0, -posterior, z_of[lv]]), "") for n, lv in enumerate(levels)]


def test_every_point_at_its_disc_agrees() -> None:
    seq = _normal()
    z = {lv: -36.0 * (n + 1) + 2.5 for n, lv in enumerate(LEVELS)}
    check = compare(_placed(list(LEVELS), z), seq)
    assert (check.verdict, check.matched, check.points, check.shift) == ("agree", 5, 5, None)
    assert check.max_distance_mm == 2.5 and all(d.distance_3d_mm == pytest.approx(np.hypot(20, 2.5), abs=0.01)
                                                for d in check.details)


def test_nearest_is_decided_along_the_spine_not_in_3d() -> None:
    # Lordosis: the L5/S1 disc lies 15 mm posterior of L4/L5. A canal point 25 mm behind L4/L5, 16 mm below it,
    # is nearer the L5/S1 centroid in 3D (21.5 mm against 29.7 mm) but nearer L4/L5 along the spine (16 < 19).
    seq = _sequence([("L4/L5", 0.0, 0.0), ("L5/S1", -35.0, -15.0)])
    point = [(LevelPoint("1", "10", 5, "Spinal Canal Stenosis", "L4/L5", 1.0, 2.0, 2), np.array([0.0, -25.0, -16.0]), "")]
    d = compare(point, seq).details[0]
    assert np.linalg.norm(np.array([0, -25, -16]) - np.array([0, -15, -35])) < np.hypot(25, 16)
    assert d.nearest_disc == "L4/L5" and d.distance_long_axis_mm == 16.0 and d.status == "no_disc_here"
    # Within AT_DISC_MM it agrees.
    point = [(point[0][0], np.array([0.0, -25.0, -12.0]), "")]
    assert compare(point, seq).details[0].status == "agree"


def test_a_consistent_shift_is_shifted_with_both_names() -> None:
    # An L6 spine; the annotators counted up from the sacrum: their L5/S1 is SPINEPS's L6/S1.
    names = ["T12/L1", "L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/L6", "L6/S1"]
    seq = _sequence([(name, -36.0 * n, 0.0) for n, name in enumerate(names)])
    z = {lv: -36.0 * (n + 2) for n, lv in enumerate(LEVELS)}       # each one disc lower than SPINEPS's name
    check = compare(_placed(list(LEVELS), z), seq)
    assert (check.verdict, check.shift, check.matched) == ("shifted", 1, 0)
    assert [d.offset_levels for d in check.details] == [1] * 5
    assert "SPINEPS L6/S1 where the annotators marked L5/S1" in check.reason
    assert "one level lower (more caudal)" in check.reason


def test_a_partial_disagreement_is_disagree_with_the_majority_shift() -> None:
    seq = _normal()
    z = {lv: -36.0 * (n + 1) for n, lv in enumerate(LEVELS)}
    z.update({"L3/L4": z["L4/L5"], "L4/L5": z["L5/S1"], "L5/S1": z["L5/S1"]})     # two of five one level low
    check = compare(_placed(list(LEVELS), z), seq)
    assert (check.verdict, check.matched, check.shift) == ("disagree", 3, None)
    z.update({"L1/L2": z["L2/L3"], "L2/L3": z["L3/L4"]})
    assert compare(_placed(list(LEVELS), z), seq).shift == 1               # four of five: a majority
    assert compare(_placed(list(LEVELS), z), seq).verdict == "disagree"


def test_a_level_without_a_disc_is_reported_not_matched() -> None:
    # SPINEPS found no L3/L4 disc: the point lies half-way between its neighbours, along the spine.
    seq = _sequence([(n, z, 0.0) for n, z in (("L1/L2", 0.0), ("L2/L3", -36.0), ("L4/L5", -108.0),
                                              ("L5/S1", -144.0))])
    z = {"L1/L2": 0.0, "L2/L3": -36.0, "L3/L4": -72.0, "L4/L5": -108.0, "L5/S1": -144.0}
    check = compare(_placed(list(LEVELS), z), seq)
    missing = check.details[2]
    assert missing.status == "no_disc_here" and missing.distance_long_axis_mm == 36.0 > AT_DISC_MM
    assert (check.verdict, check.matched, check.max_distance_mm) == ("disagree", 4, 36.0)
    assert "no disc at the annotated L3/L4" in check.reason
    # The other points all one level off, the disc gap among them: a shift, but not every point is at a disc.
    seq = _sequence([(n, z, 0.0) for n, z in (("T12/L1", 36.0), ("L1/L2", 0.0), ("L2/L3", -36.0),
                                              ("L4/L5", -108.0))])
    z = {"L1/L2": 36.0, "L2/L3": 0.0, "L3/L4": -36.0, "L4/L5": -72.0, "L5/S1": -108.0}
    check = compare(_placed(list(LEVELS), z), seq)
    assert [d.status for d in check.details].count("no_disc_here") == 1
    assert (check.verdict, check.shift, check.matched) == ("disagree", -1, 0)


def test_unplaced_points_are_reported_not_guessed() -> None:
    seq = _normal()
    z = {lv: -36.0 * (n + 1) for n, lv in enumerate(LEVELS)}
    placed = _placed(list(LEVELS), z)
    placed[4] = (placed[4][0], None, "no image with InstanceNumber 99 in /x")
    check = compare(placed, seq)
    assert (check.verdict, check.points, check.placed, check.matched) == ("agree", 5, 4, 4)
    assert check.details[4].status == "not_placed" and "InstanceNumber 99" in check.details[4].problem
    assert "1 point(s) not placed" in check.reason
    nothing = compare([(p, None, "gone") for p, _, _ in placed], seq)
    assert (nothing.verdict, nothing.available) == ("not_available", False) and "gone" in nothing.reason


def test_not_available_without_names_or_discs() -> None:
    z = {lv: 0.0 for lv in LEVELS}
    unlabelled = compare(_placed(["L1/L2"], z), _sequence([("L1/L2", 0.0, 0.0)], anatomical=False))
    assert unlabelled.verdict == "not_available" and "labels not anatomical" in unlabelled.reason
    nodisc = compare(_placed(["L1/L2"], z), SpineSequence([], DOWN, True))
    assert nodisc.verdict == "not_available" and "no disc" in nodisc.reason


# ---------------------------------------------------------------- the LSTV findings


def _lstv(pattern: str, **more) -> dict:
    return {"pattern": pattern, "lumbar_count": 5, "candidates": [], "caveats": ["lumbar count note"], **more}


def test_a_consistent_shift_is_a_candidate_with_both_names_and_replaces_the_old_one() -> None:
    names = ["T12/L1", *LEVELS]
    seq = _sequence([(name, -36.0 * n, 0.0) for n, name in enumerate(names)])
    z = {lv: -36.0 * n for n, lv in enumerate(LEVELS)}          # one disc higher: SPINEPS's names run higher
    levels = compare(_placed(list(LEVELS), z), seq).to_json()
    assert (levels["verdict"], levels["shift"]) == ("shifted", -1)
    once = lstv_with_levels(_lstv("normal"), levels)
    assert [c["pattern"] for c in once["candidates"]] == [SHIFT_PATTERN]
    evidence = once["candidates"][0]["evidence"]
    assert evidence.startswith(SOURCE) and "SPINEPS L4/L5 where the annotators marked L5/S1" in evidence
    assert "SPINEPS T12/L1 where they marked L1/L2" in evidence and "shift -1" in evidence
    assert once["caveats"][0] == "lumbar count note" and once["caveats"][1].startswith("level check: shifted")
    twice = lstv_with_levels(once, levels)
    assert twice == once                                          # replaced, never added twice
    agree = compare(_placed(list(LEVELS), {lv: -36.0 * (n + 1) for n, lv in enumerate(LEVELS)}), seq).to_json()
    cleared = lstv_with_levels(once, agree)
    assert cleared["candidates"] == [] and cleared["caveats"] == ["lumbar count note"]


def test_a_disagreement_is_a_candidate_only_on_a_transitional_spine() -> None:
    seq = _normal()
    z = {lv: -36.0 * (n + 1) for n, lv in enumerate(LEVELS)}
    z["L5/S1"], z["L4/L5"] = z["L4/L5"], z["L3/L4"]     # the two lowest points one disc higher
    levels = compare(_placed(list(LEVELS), z), seq).to_json()
    assert levels["verdict"] == "disagree"
    normal = lstv_with_levels(_lstv("normal"), levels)
    assert normal["candidates"] == [] and any(c.startswith("level check: disagree") for c in normal["caveats"])
    l6 = lstv_with_levels(_lstv("lumbarization", candidates=[{"pattern": "lumbarization", "evidence": "L6"}]), levels)
    assert [c["pattern"] for c in l6["candidates"]] == ["lumbarization", "lumbarization"]
    assert "2 of 5 annotated discs named otherwise" in l6["candidates"][1]["evidence"]


def test_summary_counts_and_agreement_rate() -> None:
    s = summarize(["agree", "agree", "shifted", "not_available", None, "disagree"])
    assert s["verdicts"] == {"agree": 2, "shifted": 1, "disagree": 1, "not_available": 1, "not_checked": 1}
    assert (s["studies"], s["checked"], s["agreement_rate"]) == (6, 4, 0.5)
    assert summarize([])["agreement_rate"] is None


# ---------------------------------------------------------------- the sequence's local axis


def test_the_whole_sacrum_is_no_lower_end_of_the_local_axis() -> None:
    # L4, L5, the L5/S1 disc, and a sacrum reaching far down and back: its centre of mass is no point on the
    # spine's axis at L5/S1, so the disc's axis runs from L5's point through the disc itself.
    m = np.zeros((10, 60, 120), dtype=np.int16)
    m[3:7, 20:30, 0:18] = 23
    m[3:7, 20:30, 20:24] = 123
    m[3:7, 20:30, 26:44] = 24
    m[3:7, 20:30, 46:50] = 124
    for k in range(52, 118):                        # leaning posteriorly (+j) as it goes down (+k)
        j = 20 + (k - 52) // 2
        m[3:7, j:j + 10, k] = 26
    affine = np.diag([1.0, -1.0, -1.0, 1.0])        # j runs posterior (RAS -y), k caudal (RAS -z)
    seq = measure(m, affine).sequence
    disc = next(e for e in seq.entries if e.label == 124)
    assert disc.name == "L5/S1"
    assert np.allclose(disc.axis_world, DOWN, atol=1e-6)
