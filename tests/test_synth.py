"""synth.py: RSNA layout, realistic DICOM, ground truth on the converter's grid, determinism."""
from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from batchseg.dicom import read_series
from batchseg.measures import measure_file
from batchseg.synth import (AX_T2, BROKEN_KINDS, INTENSITY_T2, SAG_T1, SAG_T2, TIER_HALF_WIDTH, VARIANTS,
                            expected_lstv, read_manifest, synth_dataset, variant_labels)

MATRIX = 96
SEED = 3


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "rsna"
    calls = []
    m = synth_dataset(root, n_studies=8, seed=SEED, matrix=MATRIX, progress=calls.append)
    return m, calls


def _good(m):
    return [s for s in m.studies if s.broken is None]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _gt(root: Path, sid: int) -> nib.Nifti1Image:
    return nib.load(root / "ground_truth" / f"{sid}_seg-vert_msk.nii.gz")


def test_layout_and_csvs(ds):
    m, calls = ds
    root = m.root
    assert calls == list(range(1, 9))
    for name in ("train_series_descriptions.csv", "train.csv", "train_label_coordinates.csv", "study_ids.txt",
                 "ground_truth/manifest.json"):
        assert (root / name).is_file(), name
    assert m.study_list == root / "study_ids.txt"
    assert [int(x) for x in m.study_list.read_text().split()] == [s.study_id for s in m.studies]

    rows = _csv(root / "train_series_descriptions.csv")
    assert set(rows[0]) == {"study_id", "series_id", "series_description"}
    assert {r["series_description"] for r in rows} == {SAG_T1, SAG_T2, AX_T2}
    listed = {(int(r["study_id"]), r["series_description"]): int(r["series_id"]) for r in rows}
    for s in m.studies:
        assert {d: listed[(s.study_id, d)] for (sid, d) in listed if sid == s.study_id} == s.series

    train = _csv(root / "train.csv")
    assert [int(r["study_id"]) for r in train] == [s.study_id for s in m.studies]
    assert len(train[0]) > 2

    coords = _csv(root / "train_label_coordinates.csv")
    assert set(coords[0]) == {"study_id", "series_id", "instance_number", "condition", "level", "x", "y"}
    for r in coords:
        s = next(s for s in m.studies if s.study_id == int(r["study_id"]))
        assert int(r["series_id"]) == s.series[SAG_T2]
        assert 0 <= float(r["x"]) < MATRIX and 0 <= float(r["y"]) < MATRIX
        assert r["level"] in ("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")


def test_ids_look_like_rsna(ds):
    m, _ = ds
    sids = [s.study_id for s in m.studies]
    assert len(set(sids)) == len(sids) and sids == sorted(sids)
    assert all(8 <= len(str(s)) <= 10 for s in sids)
    series = [v for s in m.studies for v in s.series.values()]
    assert len(set(series)) == len(series)
    assert all(2**31 < v < 2**63 for v in series)


def test_variants_cycle_and_last_three_are_broken(ds):
    m, _ = ds
    assert [s.variant for s in m.studies] == list(VARIANTS[:8])
    assert VARIANTS[:5] == ("normal", "L6", "T13", "four_lumbar", "top_L2")   # a demo of 8 shows all five
    assert [s.broken for s in m.studies] == [None] * 5 + list(BROKEN_KINDS)
    images = m.root / "train_images"
    by_kind = {s.broken: s for s in m.studies}

    no_t2 = by_kind["no_t2"]
    assert SAG_T2 not in no_t2.series
    assert sorted(p.name for p in (images / str(no_t2.study_id)).iterdir()) == \
        sorted(str(v) for v in no_t2.series.values())

    assert not (images / str(by_kind["missing_folder"].study_id)).exists()

    trunc = by_kind["truncated"]
    sizes = sorted(p.stat().st_size for p in (images / str(trunc.study_id) / str(trunc.series[SAG_T2])).iterdir())
    # Exactly one file cut to half (headers differ by a few bytes of position text).
    assert abs(sizes[0] - sizes[1] // 2) < 64 and sizes[-1] - sizes[1] < 64

    man = read_manifest(m.root)["studies"]
    for s in m.studies:
        e = man[str(s.study_id)]
        assert e["variant"] == s.variant and e["broken"] == s.broken
        assert (e["ground_truth"] is None) == (s.broken is not None)
        assert (m.root / "ground_truth" / f"{s.study_id}_seg-vert_msk.nii.gz").exists() == (s.broken is None)


def test_dicom_headers_are_realistic(ds):
    m, _ = ds
    s = _good(m)[0]
    for desc, tag in ((SAG_T2, "T2"), (SAG_T1, "T1")):
        folder = m.root / "train_images" / str(s.study_id) / str(s.series[desc])
        dss = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
        assert 15 <= len(dss) <= 20
        assert {d.SeriesDescription for d in dss} == {tag}
        assert sorted(int(d.InstanceNumber) for d in dss) == list(range(1, len(dss) + 1))
        for d in dss:
            assert d.Modality == "MR" and d.StudyInstanceUID == str(s.study_id)
            assert (d.Rows, d.Columns) == (MATRIX, MATRIX)
            assert np.allclose([float(v) for v in d.ImageOrientationPatient], [0, 1, 0, 0, 0, -1], atol=0.1)
            assert float(d.RescaleSlope) == 1 and float(d.RescaleIntercept) == 0
            assert d.pixel_array.dtype in (np.int16, np.uint16)
        iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        along = sorted(float(np.array([float(v) for v in d.ImagePositionPatient]) @ normal) for d in dss)
        steps = np.diff(along)
        assert 3.3 <= steps.mean() <= 4.5 and np.ptp(steps) < 1e-3


def test_pixel_spacing_at_full_matrix(tmp_path):
    m = synth_dataset(tmp_path / "big", n_studies=1, seed=1, matrix=256)
    s = m.studies[0]
    f = next((m.root / "train_images" / str(s.study_id) / str(s.series[SAG_T2])).iterdir())
    d = pydicom.dcmread(f)
    assert (d.Rows, d.Columns) == (256, 256)
    assert all(1.1 <= float(v) <= 1.2 for v in d.PixelSpacing)


def _dcm2niix() -> str:
    exe = Path(sys.executable).parent / "dcm2niix"
    return str(exe) if exe.exists() else (shutil.which("dcm2niix") or "dcm2niix")


def test_ground_truth_is_on_dcm2niix_grid(ds, tmp_path):
    """An independent converter sees the same voxels and world positions as the ground truth."""
    m, _ = ds
    for s in _good(m):
        out = tmp_path / str(s.study_id)
        out.mkdir()
        subprocess.run([_dcm2niix(), "-z", "n", "-b", "n", "-f", "img", "-o", str(out),
                        str(m.root / "train_images" / str(s.study_id) / str(s.series[SAG_T2]))],
                       check=True, capture_output=True)
        img = nib.load(out / "img.nii")
        gt = _gt(m.root, s.study_id)
        t = ornt_transform(io_orientation(img.affine), io_orientation(gt.affine))
        data = apply_orientation(np.asanyarray(img.dataobj), t)
        aff = img.affine @ inv_ornt_aff(t, img.shape)
        assert data.shape == gt.shape
        assert np.allclose(aff, gt.affine, atol=1e-3)
        _assert_code_encodes_labels(data, np.asanyarray(gt.dataobj))


def test_ground_truth_is_on_batchseg_converter_grid(ds):
    m, _ = ds
    for s in _good(m):
        data, affine, _ = read_series(m.root / "train_images" / str(s.study_id) / str(s.series[SAG_T2]))
        gt = _gt(m.root, s.study_id)
        assert data.shape == gt.shape
        assert np.allclose(affine, gt.affine, atol=1e-4)   # NIfTI keeps the affine in float32
        _assert_code_encodes_labels(data, np.asanyarray(gt.dataobj))


def _assert_code_encodes_labels(data: np.ndarray, labels: np.ndarray) -> None:
    """Each intensity tier holds exactly the voxels of its label class; repeat_label bodies carry T12's label."""
    tier = {name: np.abs(data.astype(np.float64) - INTENSITY_T2[name]) <= TIER_HALF_WIDTH
            for name in ("thoracic", "lumbar", "sacrum", "disc", "repeat_label")}
    assert np.array_equal(tier["thoracic"] | tier["repeat_label"], np.isin(labels, [17, 18, 19, 28]))
    assert not (tier["repeat_label"] & (labels != 19)).any()
    assert np.array_equal(tier["lumbar"], np.isin(labels, range(20, 26)))
    assert np.array_equal(tier["sacrum"], labels == 26)
    assert np.array_equal(tier["disc"], labels >= 100)


_THORACIC = {17, 18, 19, 117, 118, 119}
_LUMBAR = {20, 21, 22, 23, 24, 120, 121, 122, 123, 124}
WANT_LABELS = {
    "normal": _THORACIC | _LUMBAR | {26},
    "L6": _THORACIC | _LUMBAR | {25, 125, 26},
    "T13": _THORACIC | {28, 128} | _LUMBAR | {26},
    "four_lumbar": _THORACIC | _LUMBAR - {24, 124} | {26},
    "top_L2": {126} | _LUMBAR - {20, 120} | {26},
    "top_L1": {126} | _LUMBAR | {26},
    "eleven_thoracic": _THORACIC - {19, 119} | _LUMBAR | {26},
    "no_sacrum": _THORACIC | _LUMBAR,
    "sacral_disc": _THORACIC | _LUMBAR | {26},
    "duplicate_T12": _THORACIC | _LUMBAR | {26},
}


def test_expected_labels_per_variant(ds):
    m, _ = ds
    man = read_manifest(m.root)["studies"]
    for s in _good(m):
        labels = set(np.unique(np.asanyarray(_gt(m.root, s.study_id).dataobj)).tolist()) - {0}
        assert labels == WANT_LABELS[s.variant]
        assert {int(k) for k in man[str(s.study_id)]["expected_labels"]} == labels
    for variant in VARIANTS:
        assert set(variant_labels(variant)) == WANT_LABELS[variant]
    assert variant_labels("T13")[119] == "T12/T13" and variant_labels("L6")[124] == "L5/L6"
    assert variant_labels("eleven_thoracic")[118] == "T11/L1" and variant_labels("top_L2")[126] == "above L2"
    assert variant_labels("no_sacrum")[124] == "below L5" and variant_labels("duplicate_T12")[119] == "T12/T12"


@pytest.fixture(scope="module")
def every_variant(tmp_path_factory):
    """One good study of each variant at the smallest matrix."""
    root = tmp_path_factory.mktemp("variants") / "rsna"
    return synth_dataset(root, n_studies=len(VARIANTS), seed=SEED, matrix=64, broken=False)


def test_every_variant_gives_its_expected_findings(every_variant):
    m = every_variant
    man = read_manifest(m.root)
    assert [s.variant for s in m.studies] == list(VARIANTS)
    for s in m.studies:
        entry = man["studies"][str(s.study_id)]
        assert entry["expected_lstv"] == expected_lstv(s.variant) == \
            man["conventions"]["variants"][s.variant]["expected_lstv"]
        lstv = measure_file(m.root / entry["ground_truth"]).lstv
        got = {"pattern": lstv.pattern, "count_assessable": lstv.count_assessable,
               "lumbar_count": lstv.lumbar_count}
        assert got == entry["expected_lstv"], s.variant
        assert measure_file(m.root / entry["ground_truth"]).vertebra_labels_json() == entry["expected_labels"]


def test_repeat_label_and_sacral_disc_phantoms(every_variant):
    m = every_variant
    by = {s.variant: s for s in m.studies}
    dup = measure_file(m.root / "ground_truth" / f"{by['duplicate_T12'].study_id}_seg-vert_msk.nii.gz")
    t12 = next(x for x in dup.structures if x.instance_id == 19)
    assert t12.components == 2 and dup.lstv.sequence.count("T12") == 2
    sac = measure_file(m.root / "ground_truth" / f"{by['sacral_disc'].study_id}_seg-vert_msk.nii.gz")
    disc = next(x for x in sac.structures if x.instance_id == 124)
    sacrum = next(x for x in sac.structures if x.instance_id == 26)
    assert disc.components == 2 and sacrum.components == 1     # the sacrum keeps a rim around the disc
    assert sac.lstv.split_labels[0]["reading"] == "disc inside the sacrum"


def test_rsna_points_name_the_true_level(every_variant):
    m = every_variant
    rows = {}
    with open(m.root / "train_label_coordinates.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            rows.setdefault(int(row["study_id"]), []).append(row["level"])
    levels = {s.variant: rows.get(s.study_id, []) for s in m.studies}
    assert levels["normal"] == ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]
    assert levels["top_L2"] == ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]   # the disc SPINEPS calls 126
    # The annotators count as the anatomy is: four lumbar vertebrae have no L4/L5 and no L5/S1 (the disc above
    # the sacrum is L4/S1), and an L6 spine's L5/L6 and L6/S1 are no RSNA level...
    assert levels["four_lumbar"] == ["L1/L2", "L2/L3", "L3/L4"]
    assert levels["T13"] == levels["eleven_thoracic"] == levels["no_sacrum"] == levels["normal"]
    # ...except the one study whose annotations are shifted: the L6 study, counted up from the sacrum.
    assert levels["L6"] == ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]
    info = read_manifest(m.root)["studies"]
    assert [i["variant"] for i in info.values() if i["level_annotations"] != "anatomical"] == ["L6"]


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown phantom variant"):
        synth_dataset(tmp_path / "x", n_studies=1, variants=["L7"])
    one = synth_dataset(tmp_path / "y", n_studies=2, seed=1, matrix=64, broken=False, variants=["no_sacrum"])
    assert [s.variant for s in one.studies] == ["no_sacrum", "no_sacrum"]


def test_field_of_view_top(ds):
    """T10 is the top structure with nothing above it (the reference counts from it); top_L*: the disc above."""
    m, _ = ds
    for s in _good(m):
        gt = _gt(m.root, s.study_id)
        lab = np.asanyarray(gt.dataobj)
        z = (gt.affine[:3, :3] @ np.argwhere(lab > 0).T.astype(float))[2] + gt.affine[2, 3]
        top_label = lab[tuple(np.argwhere(lab > 0)[np.argmax(z)])]
        assert top_label == (126 if s.variant.startswith("top_") else 17)


def test_deterministic_in_seed(ds, tmp_path):
    m, _ = ds
    again = synth_dataset(tmp_path / "again", n_studies=8, seed=SEED, matrix=MATRIX)
    assert [s.study_id for s in again.studies] == [s.study_id for s in m.studies]
    assert _tree_digest(again.root) == _tree_digest(m.root)
    other = synth_dataset(tmp_path / "other", n_studies=2, seed=SEED + 1, matrix=64)
    assert {s.study_id for s in other.studies}.isdisjoint(s.study_id for s in m.studies)


def test_broken_off_and_small_datasets(tmp_path):
    a = synth_dataset(tmp_path / "a", n_studies=4, seed=0, matrix=64, broken=False)
    assert all(s.broken is None for s in a.studies)
    b = synth_dataset(tmp_path / "b", n_studies=3, seed=0, matrix=64)
    assert all(s.broken is None for s in b.studies)
    c = synth_dataset(tmp_path / "c", n_studies=4, seed=0, matrix=64, split="test")
    assert [s.broken for s in c.studies] == [None, "no_t2", "truncated", "missing_folder"]
    assert (c.root / "test_series_descriptions.csv").exists() and (c.root / "test_images").is_dir()


def test_refuses_to_mix_into_an_existing_dataset(ds):
    m, _ = ds
    with pytest.raises(FileExistsError):
        synth_dataset(m.root, n_studies=2, seed=9, matrix=64)
    with pytest.raises(ValueError):
        synth_dataset(m.root / "x", n_studies=2, matrix=32)
