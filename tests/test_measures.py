"""measures.py and labels.py: names, LSTV findings, exact centroids, agreement with a slow reference."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from batchseg.errors import StudyError
from batchseg.enumeration import name_structures
from batchseg.labels import VERTEBRA_NAMES, label_kind, label_name
from batchseg.measures import DEFINITIONS, measure, measure_file


def _oblique_affine() -> np.ndarray:
    """A sheared, rotated, anisotropic, translated voxel -> world map."""
    rot = np.array([[0.0, 0.1, 0.995], [-0.995, 0.0, 0.1], [0.1, -0.995, 0.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.7, 0.9, 4.2])
    a[:3, 3] = [12.5, -80.25, 33.0]
    return a


# Voxel k runs inferiorly (world -z): index 0 of a _stack_map is the top of the spine.
AFFINE_TOP_DOWN = np.array([[0.0, 0.8, 0.0, -5.0], [-0.9, 0.0, 0.0, 12.0], [0.0, 0.0, -3.5, 40.0], [0, 0, 0, 1.0]])


def _stack_map(labels: list[int], shape=(20, 12, 8 * 40)) -> np.ndarray:
    """Boxes stacked along the last axis, one per label, top (index 0) first."""
    m = np.zeros(shape, dtype=np.int16)
    step = shape[2] // len(labels)
    for n, v in enumerate(labels):
        m[2:-2, 2:-2, n * step + 1:(n + 1) * step - 1] = v
    return m


# ---------------------------------------------------------------- label table


def test_vertebra_table_is_tptbox_numbering():
    assert [VERTEBRA_NAMES[i] for i in (1, 7, 8, 19, 20, 24, 25, 26, 28)] == \
        ["C1", "C7", "T1", "T12", "L1", "L5", "L6", "S1", "T13"]
    assert len(VERTEBRA_NAMES) == 28 - 1  # 1..26 and 28; 27 is no vertebra


@pytest.mark.parametrize("label,name", [
    (118, "T11/T12"), (119, "T12/L1"), (120, "L1/L2"), (123, "L4/L5"), (124, "L5/S1"),
    (125, "L6/S1"), (128, "T13/L1"), (107, "C7/T1"), (101, "C1/C2"), (20, "L1"), (28, "T13"),
    (220, "endplates at the L1/L2 disc"), (219, "endplates at the T12/L1 disc"),
    (226, "endplate above the top vertebra"),
])
def test_table_names(label, name):
    assert label_name(label) == name


def test_126_is_never_an_s1_s2_disc():
    name = label_name(126)
    assert name == "disc above the top vertebra" and "S2" not in name and "S1" not in name
    assert label_kind(126) == "disc"


@pytest.mark.parametrize("label,kind", [(5, "vertebra"), (28, "vertebra"), (26, "sacrum"), (124, "disc"),
                                        (224, "endplate"), (0, "other"), (27, "other"), (100, "other"),
                                        (127, "other"), (60, "other"), (300, "other")])
def test_label_kind(label, kind):
    assert label_kind(label) == kind


# ---------------------------------------------------------------- names from the sequence


def _names(top_to_bottom: list[int], present: list[int] | None = None) -> dict[int, str]:
    return name_structures([(v, label_kind(v)) for v in top_to_bottom], present or top_to_bottom)[1]


def test_disc_names_follow_the_real_neighbours():
    assert _names([24, 124, 25, 125, 26])[124] == "L5/L6"
    assert _names([19, 119, 28, 128, 20])[119] == "T12/T13"
    assert _names([23, 123, 26])[123] == "L4/S1"                 # four lumbar vertebrae
    assert _names([18, 118, 20])[118] == "T11/L1"                # T12 skipped: not "T11/T12"
    assert _names([20, 120, 21, 121, 23])[121] == "L2/L4"        # a lost L3 shows as what it is
    assert _names([126, 21, 121, 22])[126] == "above L2"         # field of view starts at L2
    assert _names([22, 122])[122] == "below L3"                  # field of view ends at L3
    assert _names([124])[124] == "L5/S1"                         # no neighbour at all: the table's name


def test_endplate_names_follow_their_disc():
    names = _names([18, 118, 20, 120, 21], present=[18, 118, 20, 120, 21, 218, 226, 222])
    assert names[218] == "endplates at the T11/L1 disc"
    assert names[226] == "endplate above the top vertebra"
    assert names[222] == "endplates at disc 122 (not in the mask)"


def test_unlabelled_names_are_an_order_only():
    order = [(2, "vertebra"), (102, "disc"), (3, "vertebra"), (103, "disc"), (4, "vertebra"), (26, "sacrum")]
    entries, names = name_structures(order, [2, 102, 3, 103, 4, 26, 126, 203], labels_anatomical=False)
    assert entries == ["unlabelled vertebra #1 from top", "unlabelled disc below vertebra #1",
                       "unlabelled vertebra #2 from top", "unlabelled disc below vertebra #2",
                       "unlabelled vertebra #3 from top", "sacrum"]
    assert names[126] == "disc above the top vertebra"
    assert names[203] == "unlabelled endplates at the disc below vertebra #2"
    assert not any(n.startswith(("C", "T", "L")) for n in names.values())


def test_names_reach_the_json_outputs():
    m = measure(_stack_map([18, 118, 20, 120, 21, 121, 22, 122, 23, 123, 24, 124, 25, 125, 26]), AFFINE_TOP_DOWN)
    names = m.vertebra_labels_json()
    assert names["118"] == "T11/L1" and names["124"] == "L5/L6" and names["125"] == "L6/S1"
    assert m.lstv.pattern == "lumbarization" and m.lstv.lumbar_count == 6 and m.lstv.l6_present
    kinds = {s.instance_id: s.kind for s in m.structures}
    assert kinds[26] == "sacrum" and kinds[125] == "disc"


# ---------------------------------------------------------------- geometry


def test_box_centroid_is_its_centre_in_voxels_and_world():
    mask = np.zeros((30, 25, 12), dtype=np.uint8)
    mask[3:10, 5:17, 2:9] = 20          # centre (6, 10.5, 5)
    mask[20:21, 0:2, 11:12] = 120       # centre (20, 0.5, 11)
    aff = _oblique_affine()
    m = measure(mask, aff)
    by = {s.instance_id: s for s in m.structures}
    assert by[20].centroid_voxel == (6.0, 10.5, 5.0)
    assert by[120].centroid_voxel == (20.0, 0.5, 11.0)
    world = aff @ np.array([6.0, 10.5, 5.0, 1.0])
    assert np.allclose(by[20].centroid_world, world[:3], atol=1e-12)
    assert by[20].volume_voxels == 7 * 12 * 7
    assert by[20].volume_mm3 == pytest.approx(7 * 12 * 7 * abs(np.linalg.det(aff[:3, :3])), rel=1e-12)


def _slow_reference(mask: np.ndarray, affine: np.ndarray) -> dict[int, tuple]:
    out = {}
    for v in np.unique(mask):
        if v == 0:
            continue
        idx = np.argwhere(mask == v)
        c = idx.mean(axis=0)
        out[int(v)] = (c, affine[:3, :3] @ c + affine[:3, 3], len(idx))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_matches_slow_per_label_reference_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(5, 40, size=3))
    pool = np.array([0, 0, 0, 20, 21, 26, 28, 120, 126, 219, 1000, 60])
    mask = rng.choice(pool, size=shape).astype((np.int32, np.uint16, np.int64, np.int16, np.uint32)[seed])
    if seed == 3:
        mask = np.asfortranarray(mask)     # nibabel hands out Fortran-ordered arrays
    aff = _oblique_affine()
    got = {s.instance_id: s for s in measure(mask, aff).structures}
    ref = _slow_reference(mask, aff)
    assert sorted(got) == sorted(ref)
    for v, (c, w, n) in ref.items():
        assert np.allclose(got[v].centroid_voxel, c, atol=1e-9)
        assert np.allclose(got[v].centroid_world, w, atol=1e-9)
        assert got[v].volume_voxels == n


# ---------------------------------------------------------------- json and files


def test_json_outputs_are_keyed_and_serialisable():
    m = measure(_stack_map([20, 120, 21, 26, 220]), AFFINE_TOP_DOWN)
    c = m.centroids_json()
    assert list(c) == ["definitions", "vertebra_20", "vertebra_21", "sacrum_26", "disc_120", "endplate_220"]
    assert c["definitions"] == DEFINITIONS
    assert set(c["disc_120"]) == {"instance_id", "anatomical_label", "centroid_voxel", "centroid_world",
                                  "volume_voxels", "volume_mm3", "components"}
    assert c["disc_120"]["anatomical_label"] == "L1/L2" and c["disc_120"]["components"] == 1
    assert "body_centroid_voxel" not in c["vertebra_20"]      # no semantic mask, no body centroid
    text = json.dumps({"c": c, "v": m.vertebra_labels_json(), "l": m.lstv_json()})
    back = json.loads(text)
    assert back["v"] == {"20": "L1", "21": "L2", "120": "L1/L2", "26": "S1", "220": "endplates at the L1/L2 disc"}
    assert back["l"]["lumbar_count"] is None and back["l"]["pattern"] == "not_assessable"
    assert back["l"]["sequence"] == ["L1", "L1/L2", "L2", "S1"]


def test_definitions_say_which_centroid_is_which():
    assert "whole label" in DEFINITIONS["centroid_voxel"] and "(i, j, k)" in DEFINITIONS["centroid_voxel"]
    assert "RAS+ millimetres" in DEFINITIONS["centroid_world"]
    assert "vertebral-body classes (49, 50)" in DEFINITIONS["body_centroid_voxel"]
    assert "ctd.json" in DEFINITIONS["body_centroid_voxel"]


# ---------------------------------------------------------------- body centroids and pieces


def _vertebra_with_arch() -> tuple[np.ndarray, np.ndarray]:
    """L1: a body box (semantic 49) and an arch box behind it (41); a sacrum; a disc between."""
    vert = np.zeros((30, 10, 40), np.int16)
    spine = np.zeros_like(vert)
    vert[2:10, 2:8, 5:15] = 20;  spine[2:10, 2:8, 5:15] = 49      # body, centre (5.5, 4.5, 9.5)
    vert[10:22, 4:6, 7:13] = 20; spine[10:22, 4:6, 7:13] = 41     # arch, centre (15.5, 4.5, 9.5)
    vert[2:10, 2:8, 15:18] = 120; spine[2:10, 2:8, 15:18] = 100
    vert[2:12, 1:9, 18:30] = 26; spine[2:12, 1:9, 18:30] = 26
    vert[25:28, 2:4, 2:4] = 21                                      # a vertebra without any body voxel
    return vert, spine


def test_body_centroid_is_the_body_class_only():
    vert, spine = _vertebra_with_arch()
    m = measure(vert, AFFINE_TOP_DOWN, spine=spine)
    by = {s.instance_id: s for s in m.structures}
    assert by[20].body_centroid_voxel == (5.5, 4.5, 9.5)
    body_world = AFFINE_TOP_DOWN @ np.array([5.5, 4.5, 9.5, 1.0])
    assert np.allclose(by[20].body_centroid_world, body_world[:3], atol=1e-12)
    n_body, n_arch = 8 * 6 * 10, 12 * 2 * 6
    whole_i = (5.5 * n_body + 15.5 * n_arch) / (n_body + n_arch)
    assert by[20].centroid_voxel == pytest.approx((whole_i, 4.5, 9.5), abs=1e-12)
    assert by[21].body_centroid_voxel is None and by[26].body_centroid_voxel is None
    c = m.centroids_json()
    assert c["vertebra_20"]["body_centroid_voxel"] == [5.5, 4.5, 9.5]
    assert c["vertebra_21"]["body_centroid_voxel"] is None and c["sacrum_26"]["body_centroid_world"] is None
    assert "body_centroid_voxel" not in c["disc_120"]
    # The sequence orders and places vertebrae by their body centroid when there is one.
    entry = next(e for e in m.sequence.entries if e.label == 20)
    assert entry.point == "body" and entry.centroid_voxel == (5.5, 4.5, 9.5)


def test_semantic_labels_50_count_as_body_too():
    vert, spine = _vertebra_with_arch()
    spine[spine == 49] = 50
    m = measure(vert, AFFINE_TOP_DOWN, spine=spine)
    assert next(s for s in m.structures if s.instance_id == 20).body_centroid_voxel == (5.5, 4.5, 9.5)


def test_semantic_mask_on_another_grid_is_refused(tmp_path):
    vert, spine = _vertebra_with_arch()
    with pytest.raises(StudyError) as e:
        measure(vert, AFFINE_TOP_DOWN, spine=spine[:, :, :-1])
    assert e.value.error_class == "measure.error"
    nib.save(nib.Nifti1Image(vert, AFFINE_TOP_DOWN), tmp_path / "v.nii.gz")
    nib.save(nib.Nifti1Image(spine, np.eye(4)), tmp_path / "s.nii.gz")
    with pytest.raises(StudyError) as e:
        measure_file(tmp_path / "v.nii.gz", spine=tmp_path / "s.nii.gz")
    assert "not on the grid" in e.value.message


def test_pieces_of_a_split_label():
    vert, spine = _vertebra_with_arch()
    vert[26:28, 8:10, 36:38] = 20                                   # a fragment of L1, far away, 8 voxels
    spine[26:28, 8:10, 36:38] = 49
    m = measure(vert, AFFINE_TOP_DOWN, spine=spine)
    l1 = next(s for s in m.structures if s.instance_id == 20)
    assert l1.components == 2 and [p.volume_voxels for p in l1.pieces] == [8 * 6 * 10 + 12 * 2 * 6, 8]
    assert l1.pieces[1].centroid_voxel == (26.5, 8.5, 36.5) and l1.pieces[1].body_centroid_voxel == (26.5, 8.5, 36.5)
    assert l1.pieces[0].body_centroid_voxel == (5.5, 4.5, 9.5)
    c = m.centroids_json()["vertebra_20"]
    assert c["components"] == 2 and [p["volume_voxels"] for p in c["pieces"]] == [624, 8]
    assert "pieces" not in m.centroids_json()["sacrum_26"]
    # The fragment is no entry of the sequence: the main piece's body stands for L1.
    assert [e.centroid_voxel for e in m.sequence.entries if e.label == 20] == [(5.5, 4.5, 9.5)]
    # Endplates hold both sides of their disc: two pieces, no caveat.
    vert[2:10, 2:8, 4] = 220
    vert[2:10, 2:8, 18] = 220
    m = measure(vert, AFFINE_TOP_DOWN, spine=spine)
    assert next(s for s in m.structures if s.instance_id == 220).components == 2
    assert not any("220" in c for c in m.lstv.caveats)


def test_sequence_axes_are_unit_caudal_vectors():
    m = measure(_stack_map([18, 118, 19, 119, 20, 120, 21, 121, 26]), AFFINE_TOP_DOWN)
    seq = m.sequence
    assert np.allclose(seq.axis_world, [0, 0, -1], atol=1e-9)
    positions = [e.position_mm for e in seq.entries]
    assert positions[0] == 0.0 and positions == sorted(positions)
    for e in seq.entries:
        assert np.isclose(np.linalg.norm(e.axis_world), 1.0) and e.axis_world[2] < 0
    rows = seq.to_json()
    assert rows[0]["name"] == "T11" and rows[0]["kind"] == "vertebra" and len(rows[0]["centroid_world"]) == 3


def test_whole_label_centroids_are_unchanged():
    """Pinned numbers: the seed's whole-label centroids (commit 8260e74) on an anisotropic, oblique grid."""
    shape = (23, 41, 57)
    i, j, k = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    m = np.zeros(shape, np.int16)
    for v, c, r in [(19, (11.3, 12.1, 9.7), (7.2, 5.1, 6.3)), (20, (11.0, 17.4, 22.2), (8.1, 6.0, 7.4)),
                    (120, (11.6, 19.9, 30.1), (7.0, 4.2, 1.9)), (21, (10.4, 22.8, 38.5), (8.4, 6.6, 7.1))]:
        m[((i - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((k - c[2]) / r[2]) ** 2 <= 1] = v
    m[(k > 47) & (k < 55) & (j > 15 + (k - 47)) & (j < 34) & (i > 4) & (i < 19)] = 26
    m[2:4, 36:39, 3:6] = 20
    m[18:20, 2:5, 50:53] = 126
    aff = np.array([[0.05, 0.62, -0.1, -31.7], [-0.71, 0.02, 0.3, 54.25], [0.2, -0.03, 3.9, -12.5], [0, 0, 0, 1.0]])
    want = {
        19: ((11.300930713547054, 12.129265770423991, 9.654601861427095),
             (-24.58026887280248, 49.3653050672182, 27.049255429162358), 967),
        20: ((10.896620278330019, 17.630218687872762, 21.930417495029822),
             (-22.417475149105368, 53.44512922465209, 74.67904572564612), 1509),
        21: ((10.420537897310513, 22.793398533007334, 38.5),
             (-20.897066014669925, 58.85728606356968, 139.05030562347187), 1636),
        26: ((11.5, 26.357142857142858, 50.714285714285715),
             (-19.854999999999997, 61.82642857142857, 186.795), 1372),
        120: ((11.596491228070175, 19.916666666666668, 30.026315789473685),
              (-21.774473684210527, 55.42271929824562, 106.3244298245614), 228),
        126: ((18.5, 3.0, 51.0), (-34.015, 56.475, 190.01), 18),
    }
    for order in ("C", "F"):
        got = {s.instance_id: s for s in measure(np.asarray(m, order=order), aff).structures}
        assert sorted(got) == sorted(want)
        for v, (voxel, world, n) in want.items():
            assert got[v].centroid_voxel == voxel and got[v].centroid_world == world, (order, v)
            assert got[v].volume_voxels == n


@pytest.mark.parametrize("affine,what", [(np.zeros((4, 4)), "zero"),
                                         (np.diag([1.0, 0.0, 3.0, 1.0]), "singular"),
                                         (np.array([[1.0, 2, 0, 0], [2, 4, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
                                          "singular")])
def test_singular_or_zero_affine_is_refused(affine, what):
    with pytest.raises(StudyError) as e:
        measure(_stack_map([20, 120, 21]), affine)
    assert e.value.error_class == "measure.error" and f"affine is {what}" in e.value.message


def test_measure_file_roundtrip(tmp_path):
    mask = _stack_map([20, 120, 21])
    aff = _oblique_affine()
    p = tmp_path / "x_seg-vert_msk.nii.gz"
    nib.save(nib.Nifti1Image(mask, aff), p)
    a = measure_file(p)
    b = measure(mask, aff)
    assert a.centroids_json().keys() == b.centroids_json().keys()
    for x, y in zip(a.structures, b.structures):
        assert np.allclose(x.centroid_world, y.centroid_world, atol=1e-4)  # affine stored as float32
        assert x.volume_voxels == y.volume_voxels


def test_empty_mask_measures_nothing():
    m = measure(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    assert m.structures == [] and list(m.centroids_json()) == ["definitions"]
    assert m.lstv.lumbar_count is None and m.lstv.count_reason == "no vertebra in the label map"


@pytest.mark.parametrize("bad", [
    np.zeros((4, 4), np.uint8),
    np.zeros((4, 4, 4, 2), np.uint8),
    np.full((3, 3, 3), 1.5, np.float32),
    np.full((3, 3, 3), -1, np.int16),
    np.full((3, 3, 3), "a"),
])
def test_bad_masks_raise_measure_error(bad):
    with pytest.raises(StudyError) as e:
        measure(bad, np.eye(4))
    assert e.value.error_class == "measure.error"
    assert "\n" not in e.value.message


def test_integral_float_masks_are_accepted():
    m = measure(np.full((2, 2, 2), 20.0, np.float32), np.eye(4))
    assert [s.instance_id for s in m.structures] == [20]


def test_unreadable_file_raises_measure_error(tmp_path):
    p = tmp_path / "broken.nii.gz"
    p.write_bytes(b"not a nifti")
    with pytest.raises(StudyError) as e:
        measure_file(p)
    assert e.value.error_class == "measure.error" and "broken.nii.gz" in e.value.message
