"""The single-file commands as a user types them: convert, centroids, synth."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from tests.conftest import batchseg
from tests.dicom_factory import write_series


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_convert_compressed_series_equals_its_uncompressed_twin(tmp_path: Path, syntax: str) -> None:
    write_series(tmp_path / "plain", seed=4)
    write_series(tmp_path / "packed", seed=4, transfer_syntax=syntax)
    for name in ("plain", "packed"):
        batchseg("convert", str(tmp_path / name), str(tmp_path / f"{name}.nii.gz"))
    plain, packed = nib.load(tmp_path / "plain.nii.gz"), nib.load(tmp_path / "packed.nii.gz")
    np.testing.assert_array_equal(np.asarray(plain.dataobj), np.asarray(packed.dataobj))
    np.testing.assert_allclose(plain.affine, packed.affine)


def test_convert_json_reports_what_it_found(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", instance_order="shuffled")
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    report = json.loads(batchseg("convert", str(tmp_path / "s"), str(tmp_path / "o.nii.gz"), "--json").stdout)
    assert report["plane"] == "sagittal" and len(report["slices_used"]) == len(series.paths)
    assert "notes.txt" in json.dumps(report)
    image = nib.load(tmp_path / "o.nii.gz")
    assert image.header.get_sform(coded=True)[1] == 1 and image.header.get_qform(coded=True)[1] == 1


def test_convert_refuses_with_one_line(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s")
    series.paths[5].unlink()
    result = batchseg("convert", str(tmp_path / "s"), str(tmp_path / "o.nii.gz"), check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "input.geometry" in result.stderr
    assert not (tmp_path / "o.nii.gz").exists()


def test_centroids_command_prints_and_writes_the_pipeline_json(tmp_path: Path) -> None:
    labels = np.zeros((20, 30, 40), dtype=np.int16)
    labels[2:6, 5:9, 10:14] = 25     # L6
    labels[10:12, 5:9, 20:22] = 126  # a disc above the top vertebra: never S1-S2
    affine = np.diag([0.5, 0.7, 4.0, 1.0])
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "seg.nii.gz")
    printed = json.loads(batchseg("centroids", str(tmp_path / "seg.nii.gz")).stdout)
    assert "whole label" in printed["definitions"]["centroid_voxel"]
    l6 = next(v for k, v in printed.items() if k != "definitions" and v["instance_id"] == 25)
    assert l6["anatomical_label"] == "L6" and l6["centroid_voxel"] == [3.5, 6.5, 11.5]
    assert l6["centroid_world"] == pytest.approx([1.75, 4.55, 46.0])
    assert l6["volume_voxels"] == 64 and l6["volume_mm3"] == pytest.approx(64 * 0.5 * 0.7 * 4.0)
    assert not any("S1/S2" in v["anatomical_label"] or "S1-S2" in v["anatomical_label"]
                   for k, v in printed.items() if k != "definitions")
    batchseg("centroids", str(tmp_path / "seg.nii.gz"), "--out", str(tmp_path / "c.json"))
    assert json.loads((tmp_path / "c.json").read_text()) == printed


def test_centroids_with_the_semantic_mask_adds_body_centroids(tmp_path: Path) -> None:
    vert = np.zeros((20, 8, 30), dtype=np.int16)
    spine = np.zeros_like(vert)
    vert[2:8, 2:6, 4:12] = 20
    spine[2:8, 2:6, 4:12] = 49        # body, centre (4.5, 3.5, 7.5)
    vert[8:16, 3:5, 6:10] = 20
    spine[8:16, 3:5, 6:10] = 41       # arch behind it
    affine = np.diag([0.5, 0.7, 4.0, 1.0])
    nib.save(nib.Nifti1Image(vert, affine), tmp_path / "vert.nii.gz")
    nib.save(nib.Nifti1Image(spine, affine), tmp_path / "spine.nii.gz")
    printed = json.loads(batchseg("centroids", str(tmp_path / "vert.nii.gz"), "--spine",
                                  str(tmp_path / "spine.nii.gz")).stdout)
    l1 = printed["vertebra_20"]
    assert l1["body_centroid_voxel"] == [4.5, 3.5, 7.5]
    assert l1["body_centroid_world"] == pytest.approx([2.25, 2.45, 30.0])
    assert l1["centroid_voxel"][0] > 6.0 and l1["components"] == 1


@pytest.mark.parametrize("affine", [np.zeros((4, 4)), np.diag([1.0, 1.0, 0.0, 1.0])])
def test_centroids_refuses_a_singular_or_zero_affine(tmp_path: Path, affine: np.ndarray) -> None:
    labels = np.zeros((6, 6, 6), dtype=np.int16)
    labels[1:4, 1:4, 1:4] = 20
    image = nib.Nifti1Image(labels, np.eye(4))
    image.set_sform(affine, code=1)   # nibabel keeps a singular sform as given
    image.set_qform(None, code=0)
    nib.save(image, tmp_path / "seg.nii.gz")
    result = batchseg("centroids", str(tmp_path / "seg.nii.gz"), check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "the affine is singular" in result.stderr or "the affine is zero" in result.stderr
    assert "seg.nii.gz" in result.stderr


def test_synth_command_writes_the_rsna_layout(tmp_path: Path) -> None:
    batchseg("synth", str(tmp_path / "d"), "--studies", "5", "--matrix", "64", "--seed", "2")
    header = (tmp_path / "d" / "train_series_descriptions.csv").read_text().splitlines()[0]
    assert header == "study_id,series_id,series_description"
    assert len((tmp_path / "d" / "study_ids.txt").read_text().split()) == 5
    assert list((tmp_path / "d" / "train_images").glob("*/*/*.dcm"))


def test_an_unreachable_ledger_is_one_line_and_saves_nothing(synth_small: Path, tmp_path: Path) -> None:
    bad = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    result = batchseg("init", "--project", str(tmp_path / "p"), "--dataset", str(synth_small), "--db", bad,
                      check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("batchseg: ledger:")
    assert not (tmp_path / "p" / "batchseg.toml").exists(), "a URL that does not work is not saved"
