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
    l6 = next(v for v in printed.values() if v["instance_id"] == 25)
    assert l6["anatomical_label"] == "L6" and l6["centroid_voxel"] == [3.5, 6.5, 11.5]
    assert l6["centroid_world"] == pytest.approx([1.75, 4.55, 46.0])
    assert l6["volume_voxels"] == 64 and l6["volume_mm3"] == pytest.approx(64 * 0.5 * 0.7 * 4.0)
    assert not any("S1/S2" in v["anatomical_label"] or "S1-S2" in v["anatomical_label"] for v in printed.values())
    batchseg("centroids", str(tmp_path / "seg.nii.gz"), "--out", str(tmp_path / "c.json"))
    assert json.loads((tmp_path / "c.json").read_text()) == printed


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
