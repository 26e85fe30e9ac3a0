"""LSTV findings from the ordered sequence: `batchseg lstv` on hand-made label maps of every pattern."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from click.testing import CliRunner

from batchseg.cli import cli
from batchseg.findings_words import PATTERNS
from batchseg.measures import measure
from tests.conftest import batchseg
from tests.label_maps import AFFINE, spine_map, stack

NORMAL = stack("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")
NOT_ASSESSABLE = "lumbar count not assessable: "

# name -> (labels top to bottom, sacral disc label, pattern, count_assessable, lumbar_count, caveat fragments)
CASES = {
    "normal": (NORMAL, None, "normal", True, 5, []),
    "L6": (stack("T11", "T12", "L1", "L2", "L3", "L4", "L5", "L6", "S1"), None, "lumbarization", True, 6, []),
    "T13": (stack("T11", "T12", "T13", "L1", "L2", "L3", "L4", "L5", "S1"), None, "thoracolumbar_t13", True, 5, []),
    "eleven_thoracic": (stack("T10", "T11", "L1", "L2", "L3", "L4", "L5", "S1"), None, "eleven_thoracic", True, 5,
                        []),
    "four_lumbar": (stack("T11", "T12", "L1", "L2", "L3", "L4", "S1"), None, "four_lumbar", True, 4, []),
    "top_L2": (stack("126", "L2", "L3", "L4", "L5", "S1"), None, "not_assessable", False, None,
               [NOT_ASSESSABLE + "thoracolumbar junction (T12/L1) not in view: top vertebra L2"]),
    "top_L1": (stack("126", "L1", "L2", "L3", "L4", "L5", "S1"), None, "not_assessable", False, None,
               [NOT_ASSESSABLE + "thoracolumbar junction (T12/L1) not in view: top vertebra L1"]),
    "no_sacrum": (stack("T11", "T12", "L1", "L2", "L3", "L4", "L5") + [124], None, "not_assessable", False, None,
                  [NOT_ASSESSABLE + "lumbosacral junction (L5/S1) not in view: bottom vertebra L5, no sacrum below"]),
    "split_124": (NORMAL, 124, "irregular", False, None, ["(124) in 2 pieces: one lies inside the sacrum"]),
    "duplicate_T12": (stack("T11", "T12", "T12", "L1", "L2", "L3", "L4", "L5", "S1"), None, "irregular", False,
                      None, ["T12 (19) appears 2 times", "(119) appears 2 times"]),
}


def _lstv_cli(tmp_path: Path, labels: list[int], sacral_disc: int | None = None, *extra: str) -> dict:
    """`batchseg lstv` on the map, in this process (the command's own code; a child process costs seconds)."""
    path = tmp_path / "vert.nii.gz"
    nib.save(nib.Nifti1Image(spine_map(labels, sacral_disc=sacral_disc), AFFINE), path)
    result = CliRunner().invoke(cli, ["lstv", str(path), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("case", CASES)
def test_lstv_command_on_every_pattern(tmp_path: Path, case: str) -> None:
    labels, sacral_disc, pattern, assessable, count, caveats = CASES[case]
    got = _lstv_cli(tmp_path, labels, sacral_disc)
    for key in ("count_assessable", "count_reason", "lumbar_count", "pattern", "candidates", "caveats", "notes",
                "split_labels", "sequence"):
        assert key in got, key
    assert got["pattern"] == pattern and got["pattern"] in PATTERNS
    assert got["count_assessable"] is assessable
    assert got["lumbar_count"] == count
    assert (got["count_reason"] is None) == assessable
    if caveats:
        for fragment in caveats:
            assert any(fragment in c for c in got["caveats"]), (fragment, got["caveats"])
    else:
        assert got["caveats"] == [], got["caveats"]
    # 126 is never read as sacralization: no candidate rests on it.
    assert not any("126" in c["evidence"] for c in got["candidates"])
    if 126 in labels:
        assert got["candidates"] == [] and any("label 126" in n for n in got["notes"])


def test_candidates_carry_their_evidence(tmp_path: Path) -> None:
    got = {case: measure(spine_map(CASES[case][0], sacral_disc=CASES[case][1]), AFFINE).lstv for case in CASES}
    patterns = {case: [c["pattern"] for c in lstv.candidates] for case, lstv in got.items()}
    assert patterns == {"normal": [], "L6": ["lumbarization"], "T13": ["thoracolumbar_t13"],
                        "eleven_thoracic": ["eleven_thoracic"], "four_lumbar": ["four_lumbar"], "top_L2": [],
                        "top_L1": [], "no_sacrum": [], "split_124": ["lumbarization"], "duplicate_T12": []}
    assert "L6 (label 25) present" in got["L6"].candidates[0]["evidence"]
    assert "T11 lies directly above L1" in got["eleven_thoracic"].candidates[0]["evidence"]
    assert "L4 lies directly above the sacrum" in got["four_lumbar"].candidates[0]["evidence"]
    assert "a disc inside the sacrum" in got["split_124"].candidates[0]["evidence"]
    # The names follow the real neighbours.
    assert got["eleven_thoracic"].sequence[:5] == ["T10", "T10/T11", "T11", "T11/L1", "L1"]
    assert got["four_lumbar"].sequence[-3:] == ["L4", "L4/S1", "S1"]
    assert got["top_L2"].sequence[:2] == ["above L2", "L2"]
    assert got["no_sacrum"].sequence[-2:] == ["L5", "below L5"]
    assert got["duplicate_T12"].sequence[2:6] == ["T12", "T12/T12", "T12", "T12/L1"]
    assert got["normal"].thoracolumbar_junction_in_view and got["normal"].lumbosacral_junction_in_view
    assert not got["top_L1"].thoracolumbar_junction_in_view and got["top_L1"].lumbosacral_junction_in_view
    assert got["no_sacrum"].thoracolumbar_junction_in_view and not got["no_sacrum"].lumbosacral_junction_in_view


def test_split_labels_say_what_each_piece_is() -> None:
    lstv = measure(spine_map(NORMAL, sacral_disc=124), AFFINE).lstv
    [split] = lstv.split_labels
    assert split["label"] == 124 and split["components"] == 2 and split["reading"] == "disc inside the sacrum"
    assert [p["fragment"] for p in split["pieces"]] == [False, False]
    assert lstv.caveat_labels == [124]
    dup = measure(spine_map(CASES["duplicate_T12"][0]), AFFINE).lstv
    assert [(s["label"], s["reading"]) for s in dup.split_labels] == [(19, "duplicate"), (119, "duplicate")]


def test_label_126_is_a_note_never_a_caveat_or_candidate() -> None:
    labels = stack("126", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")
    lstv = measure(spine_map(labels), AFFINE).lstv
    assert lstv.pattern == "normal" and lstv.count_assessable and lstv.lumbar_count == 5
    assert lstv.caveats == [] and lstv.candidates == []
    assert len(lstv.notes) == 1 and "label 126" in lstv.notes[0] and "not an S1-S2 disc" in lstv.notes[0]
    assert lstv.sequence[0] == "above T11"


def test_a_fragment_is_a_caveat_that_leaves_the_count_alone() -> None:
    m = spine_map(NORMAL)
    m[0, 0, 40] = 22                     # one stray L3 voxel far from L3's body
    lstv = measure(m, AFFINE).lstv
    assert lstv.pattern == "normal" and lstv.count_assessable and lstv.lumbar_count == 5
    assert lstv.caveats == ["L3 (22) in 2 pieces: 1 fragment (1 voxels) apart from the main piece"]
    assert lstv.split_labels[0]["reading"] == "fragments" and lstv.caveat_labels == [22]
    assert lstv.sequence.count("L3") == 1


def test_gaps_and_order_are_irregular() -> None:
    gap = measure(spine_map(stack("T12", "L1", "L2", "L4", "L5", "S1")), AFFINE).lstv
    assert gap.pattern == "irregular" and not gap.count_assessable and gap.lumbar_count is None
    assert gap.caveats == ["gap: L3 missing between L2 and L4"]
    assert gap.count_reason == "labels irregular: gap: L3 missing between L2 and L4"
    assert "L2/L4" in gap.sequence
    swapped = measure(spine_map([19, 119, 21, 120, 20, 121, 22, 122, 23, 123, 24, 124, 26]), AFFINE).lstv
    assert swapped.pattern == "irregular"
    assert "label out of order: L1 lies below L2" in swapped.caveats


def test_volume_far_from_the_median_is_a_caveat_inside_and_a_note_at_the_edge() -> None:
    m = spine_map(NORMAL)
    l3 = np.argwhere(m == 22)
    m[m == 22] = 0
    m[tuple(l3[:30].T)] = 22             # L3 shrunk to a sliver in the middle of the spine
    top = np.argwhere(m == 17)
    m[tuple(top[40:].T)] = 0             # T10 cut by the top edge of the field of view
    lstv = measure(m, AFFINE).lstv
    assert any(c.startswith("L3 (22): volume 0.") and "under-segmented" in c for c in lstv.caveats)
    assert any(n.startswith("T10 (17) at the top of the field of view") for n in lstv.notes)
    assert not any("T10" in c for c in lstv.caveats)


def test_unlabelled_maps_are_not_assessable(tmp_path: Path) -> None:
    got = _lstv_cli(tmp_path, [2, 102, 3, 103, 4, 104, 5, 105, 6, 106, 26], None, "--unlabelled")
    assert got["pattern"] == "not_assessable" and got["lumbar_count"] is None and got["candidates"] == []
    assert got["count_reason"].startswith("labels not anatomical")
    assert got["l6_present"] is None and got["t13_present"] is None      # unknown, never "absent"
    assert got["sequence"][:3] == ["unlabelled vertebra #1 from top", "unlabelled disc below vertebra #1",
                                   "unlabelled vertebra #2 from top"]
    assert got["sequence"][-1] == "sacrum"


def test_lstv_command_as_a_user_runs_it(tmp_path: Path) -> None:
    path = tmp_path / "vert.nii.gz"
    nib.save(nib.Nifti1Image(spine_map(CASES["top_L2"][0]), AFFINE), path)
    got = json.loads(batchseg("lstv", str(path)).stdout)
    assert got["pattern"] == "not_assessable" and got["lumbar_count"] is None
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"no nifti")
    result = batchseg("lstv", str(bad), check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "measure.error" in result.stderr
