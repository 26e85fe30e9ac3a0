"""measures.py and labels.py: names, LSTV findings, exact centroids, agreement with a slow reference."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from batchseg.errors import StudyError
from batchseg.labels import VERTEBRA_NAMES, label_kind, label_name
from batchseg.measures import measure, measure_file


def _oblique_affine() -> np.ndarray:
    """A sheared, rotated, anisotropic, translated voxel -> world map."""
    rot = np.array([[0.0, 0.1, 0.995], [-0.995, 0.0, 0.1], [0.1, -0.995, 0.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.7, 0.9, 4.2])
    a[:3, 3] = [12.5, -80.25, 33.0]
    return a


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
    (220, "endplate L1"), (119 + 100, "endplate T12"),
])
def test_default_names(label, name):
    assert label_name(label) == name


def test_126_is_never_an_s1_s2_disc():
    name = label_name(126)
    assert "126" in name and "S2" not in name and "S1" not in name
    assert label_kind(126) == "disc"


@pytest.mark.parametrize("label,kind", [(5, "vertebra"), (28, "vertebra"), (26, "sacrum"), (124, "disc"),
                                        (224, "endplate"), (0, "other"), (27, "other"), (100, "other"),
                                        (127, "other"), (60, "other"), (300, "other")])
def test_label_kind(label, kind):
    assert label_kind(label) == kind


def test_disc_names_follow_the_vertebrae_present():
    assert label_name(124, {24, 25, 26}) == "L5/L6"
    assert label_name(119, {19, 28, 20}) == "T12/T13"
    assert label_name(123, {20, 21, 22, 23, 26}) == "L4/S1"      # four lumbar vertebrae
    assert label_name(121, {20, 21, 23, 24, 26}) == "L2/L3"      # a missed L3 is not skipped
    assert label_name(122, {21, 22}) == "L3/L4"                  # field of view ends at L3


# ---------------------------------------------------------------- LSTV


def test_l6_and_t13_map_names_and_flags():
    top_down = [18, 118, 19, 119, 28, 128, 20, 120, 21, 121, 22, 122, 23, 123, 24, 124, 25, 125, 26]
    m = measure(_stack_map(top_down), _oblique_affine())
    names = m.vertebra_labels_json()
    assert names == {
        "18": "T11", "19": "T12", "20": "L1", "21": "L2", "22": "L3", "23": "L4", "24": "L5", "25": "L6",
        "26": "S1", "28": "T13", "118": "T11/T12", "119": "T12/T13", "120": "L1/L2", "121": "L2/L3",
        "122": "L3/L4", "123": "L4/L5", "124": "L5/L6", "125": "L6/S1", "128": "T13/L1",
    }
    assert m.lstv.assessed and m.lstv.lumbar_count == 6
    assert m.lstv.l6_present and m.lstv.t13_present
    assert m.lstv.candidates == ["lumbarization (L6 present)", "thoracolumbar (T13 present)"]
    kinds = {s.instance_id: s.kind for s in m.structures}
    assert kinds[26] == "sacrum" and kinds[28] == "vertebra" and kinds[128] == "disc"


def test_normal_spine_has_no_candidates():
    m = measure(_stack_map([19, 119, 20, 120, 21, 121, 22, 122, 23, 123, 24, 124, 26]), np.eye(4))
    assert m.lstv.assessed and m.lstv.lumbar_count == 5
    assert m.lstv.candidates == [] and m.lstv.notes == []
    assert m.vertebra_labels_json()["124"] == "L5/S1"


def test_126_gives_no_sacralization_flag():
    m = measure(_stack_map([126, 20, 120, 21, 121, 22, 122, 23, 123, 24, 124, 26]), np.eye(4))
    assert m.lstv.candidates == []
    assert not any("sacraliz" in c for c in m.lstv.candidates)
    assert "label 126 present: disc above the top vertebra, not S1-S2" in m.lstv.notes
    assert m.vertebra_labels_json()["126"] == "disc above top vertebra (126)"


def test_four_lumbar_is_a_candidate_for_review():
    m = measure(_stack_map([19, 119, 20, 120, 21, 121, 22, 122, 23, 123, 26]), np.eye(4))
    assert m.lstv.lumbar_count == 4
    assert m.lstv.candidates == ["four lumbar vertebrae above the sacrum (sacralization or miscount)"]
    assert m.vertebra_labels_json()["123"] == "L4/S1"


def test_missing_sacrum_and_gaps_are_noted():
    m = measure(_stack_map([20, 21, 23]), np.eye(4))
    assert any("sacrum (26) not in the mask" in n for n in m.lstv.notes)
    assert any("L3 missing" in n for n in m.lstv.notes)


def test_non_anatomical_labels_are_not_assessed():
    m = measure(_stack_map([2, 102, 3, 103, 4, 26, 126]), np.eye(4), labels_anatomical=False)
    assert not m.lstv.assessed and m.lstv.lumbar_count is None and m.lstv.candidates == []
    assert m.lstv.notes[0].startswith("not assessed: labels not anatomical")
    names = m.vertebra_labels_json()
    assert names["2"] == "unlabelled vertebra #1 from top"
    assert names["4"] == "unlabelled vertebra #3 from top"
    assert names["102"] == "unlabelled disc below vertebra #1"
    assert names["26"] == "sacrum"
    assert not any(n.startswith(("C", "T", "L")) for n in names.values())


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
    m = measure(_stack_map([20, 120, 21, 26, 220]), np.eye(4))
    c = m.centroids_json()
    assert list(c) == ["vertebra_20", "vertebra_21", "sacrum_26", "disc_120", "endplate_220"]  # by label
    assert set(c["disc_120"]) == {"instance_id", "anatomical_label", "centroid_voxel", "centroid_world",
                                  "volume_voxels", "volume_mm3"}
    assert c["disc_120"]["anatomical_label"] == "L1/L2"
    text = json.dumps({"c": c, "v": m.vertebra_labels_json(), "l": m.lstv_json()})
    back = json.loads(text)
    assert back["v"] == {"20": "L1", "21": "L2", "120": "L1/L2", "26": "S1", "220": "endplate L1"}
    assert back["l"]["lumbar_count"] == 2


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
    assert m.structures == [] and m.centroids_json() == {} and m.lstv.lumbar_count == 0


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
