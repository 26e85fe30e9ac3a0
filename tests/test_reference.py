"""Reference (phantom) and noop segmenters: exact labels on every phantom variant, robust, honest errors."""
from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from batchseg.dicom import convert_series
from batchseg.errors import StudyError
from batchseg.measures import measure_file
from batchseg.segmenters import load_segmenter
from batchseg.segmenters.noop import NoopSegmenter
from batchseg.segmenters.reference import ReferenceSegmenter, segment_volume
from batchseg.synth import INTENSITY_T2, SAG_T2, VARIANTS, expected_lstv, read_manifest, synth_dataset


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every good phantom study converted from its DICOM by the real converter."""
    root = tmp_path_factory.mktemp("ref") / "rsna"
    m = synth_dataset(root, n_studies=len(VARIANTS), seed=11, matrix=96, broken=False)
    out = []
    for s in m.studies:
        if s.broken:
            continue
        work = root.parent / "work" / str(s.study_id)
        work.mkdir(parents=True)
        nii = work / f"{s.study_id}_T2w.nii.gz"
        convert_series(root / "train_images" / str(s.study_id) / str(s.series[SAG_T2]), nii, study=str(s.study_id))
        out.append((s, nii, root / "ground_truth" / f"{s.study_id}_seg-vert_msk.nii.gz"))
    assert [s.variant for s, _, _ in out] == list(VARIANTS)
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero((a == b) & (a > 0)) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_reference_recovers_ground_truth_on_every_variant(converted):
    seg = ReferenceSegmenter()
    for s, nii, gt_path in converted:
        r = seg.segment(nii, nii.parent, str(s.study_id))
        assert r.labels_anatomical and r.vert_mask.name == f"{s.study_id}_seg-vert_msk.nii.gz"
        got_img, gt_img = nib.load(r.vert_mask), nib.load(gt_path)
        got, gt = np.asanyarray(got_img.dataobj), np.asanyarray(gt_img.dataobj)
        assert np.allclose(got_img.affine, gt_img.affine, atol=1e-4) and got.shape == gt.shape
        assert _dice(got, gt) == 1.0, s.variant
        assert np.array_equal(got, gt), s.variant

        mg, mt = measure_file(r.vert_mask, spine=r.spine_mask), measure_file(gt_path)
        assert [x.instance_id for x in mg.structures] == [x.instance_id for x in mt.structures]
        for a, b in zip(mg.structures, mt.structures):
            assert np.max(np.abs(np.subtract(a.centroid_voxel, b.centroid_voxel))) <= 1.0
        assert mg.lstv.pattern == mt.lstv.pattern and mg.lstv.caveats == mt.lstv.caveats
        want = expected_lstv(s.variant)
        assert (mg.lstv.pattern, mg.lstv.count_assessable, mg.lstv.lumbar_count) == \
            (want["pattern"], want["count_assessable"], want["lumbar_count"]), s.variant


def test_names_and_findings_are_the_manifests(converted):
    manifest = read_manifest(converted[0][2].parent.parent)["studies"]
    for s, _, gt_path in converted:
        m = measure_file(gt_path)
        entry = manifest[str(s.study_id)]
        assert m.vertebra_labels_json() == entry["expected_labels"], s.variant
        assert entry["expected_lstv"] == expected_lstv(s.variant)
        assert {c["pattern"] for c in m.lstv.candidates} == {
            "normal": set(), "L6": {"lumbarization"}, "T13": {"thoracolumbar_t13"}, "four_lumbar": {"four_lumbar"},
            "eleven_thoracic": {"eleven_thoracic"}, "top_L1": set(), "top_L2": set(), "no_sacrum": set(),
            "sacral_disc": {"lumbarization"}, "duplicate_T12": set()}[s.variant]
        assert bool(m.lstv.caveats) == (s.variant in ("top_L1", "top_L2", "no_sacrum", "sacral_disc",
                                                      "duplicate_T12")), s.variant


def test_semantic_mask_and_ctd_file(converted):
    s, nii, gt_path = converted[0]
    work = nii.parent / "again"
    r = ReferenceSegmenter().segment(nii, work, str(s.study_id))
    vert = np.asanyarray(nib.load(r.vert_mask).dataobj)
    spine = np.asanyarray(nib.load(r.spine_mask).dataobj)
    assert r.spine_mask.name == f"{s.study_id}_seg-spine_msk.nii.gz"
    assert np.array_equal(spine == 49, np.isin(vert, list(range(1, 26)) + [28]))
    assert np.array_equal(spine == 100, vert >= 100)
    assert np.array_equal(spine == 26, vert == 26)

    header, body = json.loads(r.ctd_json.read_text())
    assert header["direction"] == list(nib.aff2axcodes(nib.load(nii).affine))
    assert header["shape"] == list(vert.shape)
    vert_labels = {int(v) for v in np.unique(vert) if 0 < v < 100}
    assert {int(k) for k in body} == vert_labels              # vertebrae and sacrum only, no discs
    gt = {x.instance_id: x for x in measure_file(gt_path).structures}
    for k, v in body.items():
        assert list(v) == ["50"]
        assert np.max(np.abs(np.subtract(v["50"], gt[int(k)].centroid_voxel))) <= 1.0


def test_reference_ignores_speckle_at_structure_intensities(converted):
    s, nii, gt_path = converted[1]
    img = nib.load(nii)
    data = img.get_fdata(dtype=np.float32)
    gt = np.asanyarray(nib.load(gt_path).dataobj)
    rng = np.random.default_rng(0)
    bg = np.argwhere(gt == 0)
    # Isolated bright voxels far from the spine: each a one-voxel component at a tier's code.
    far = bg[np.abs(bg[:, 0] - np.argwhere(gt > 0)[:, 0].mean()) > 30]
    pick = far[rng.choice(len(far), 40, replace=False)]
    codes = [INTENSITY_T2[k] for k in ("thoracic", "lumbar", "sacrum", "disc")]
    for n, (i, j, k) in enumerate(pick):
        data[i, j, k] = codes[n % 4]
    vert, _, _ = segment_volume(data, img.affine)
    assert np.array_equal(vert, gt)


def test_empty_and_impossible_volumes_raise(tmp_path):
    aff = np.diag([1.0, 1.0, 4.0, 1.0])
    with pytest.raises(StudyError) as e:
        segment_volume(np.full((30, 30, 5), INTENSITY_T2["soft_tissue"], np.float32), aff, study_id="42")
    assert e.value.error_class == "segment.empty" and "study 42" in e.value.message

    # Seven lumbar-coded boxes stacked: more than the phantom convention allows.
    vol = np.zeros((20, 160, 4), np.float32)
    for n in range(7):
        vol[5:15, 20 * n + 2:20 * n + 16, :] = INTENSITY_T2["lumbar"]
    with pytest.raises(StudyError) as e:
        segment_volume(vol, np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]]))
    assert e.value.error_class == "segment.error"

    nii = tmp_path / "blank_T2w.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), aff), nii)
    with pytest.raises(StudyError) as e:
        ReferenceSegmenter().segment(nii, tmp_path / "w", "7")
    assert e.value.error_class == "segment.empty"
    bad = tmp_path / "bad_T2w.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(StudyError) as e:
        ReferenceSegmenter().segment(bad, tmp_path / "w", "7")
    assert e.value.error_class == "segment.error" and "bad_T2w" in e.value.message


def test_describe_and_registry():
    seg = load_segmenter("reference")
    assert seg.name == "reference"
    assert seg.describe() == {"name": "reference", "note": "classical threshold segmenter for batchseg's "
                                                                "synthetic phantoms only; not for real MRI"}
    noop = load_segmenter("noop", {"delay": 0.0, "fail_studies": ["5"]})
    assert noop.name == "noop" and "plumbing check" in noop.describe()["note"]


def test_noop_writes_one_l1_box_on_the_input_grid(converted):
    s, nii, _ = converted[0]
    work = nii.parent / "noop"
    r = NoopSegmenter().segment(nii, work, str(s.study_id))
    img, src = nib.load(r.vert_mask), nib.load(nii)
    mask = np.asanyarray(img.dataobj)
    assert mask.shape == src.shape and np.allclose(img.affine, src.affine)
    assert set(np.unique(mask).tolist()) == {0, 20}
    m = measure_file(r.vert_mask)
    assert [(x.instance_id, x.anatomical_label) for x in m.structures] == [(20, "L1")]
    assert np.allclose(m.structures[0].centroid_voxel, np.array(mask.shape) // 2 - 0.5, atol=1e-9)


def test_noop_fails_on_request_and_waits(tmp_path, converted):
    s, nii, _ = converted[0]
    seg = NoopSegmenter(delay=0.2, fail_studies=[str(s.study_id)])
    t = time.monotonic()
    with pytest.raises(StudyError) as e:
        seg.segment(nii, tmp_path, str(s.study_id))
    assert time.monotonic() - t >= 0.2
    assert e.value.error_class == "segment.error" and e.value.retryable
    assert not list(Path(tmp_path).iterdir())
    NoopSegmenter(fail_studies=[str(s.study_id)]).segment(nii, tmp_path, "other")
    assert (tmp_path / "other_seg-vert_msk.nii.gz").exists()
