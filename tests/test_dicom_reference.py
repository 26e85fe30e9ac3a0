"""The converter against dcm2niix: its stored references on real data, and the binary on synthetic quirks."""
from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from batchseg.dicom import convert_series
from tests.dicom_factory import make_volume, tilted_sagittal, write_series

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
DECUBITUS = DATA / "dcm_qa_decubitus"
POSITIONS = ["HFS", "HFP", "HFDR", "HFDL"]


def _canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """(values, affine) reoriented to RAS axis order, so two tools' files compare voxel by voxel."""
    can = nib.as_closest_canonical(img)
    return np.asanyarray(can.dataobj, dtype=np.float64), can.affine


def max_world_distance(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance between the world positions two affines give one voxel centre, over the grid.

    The difference of two affine maps is affine, so its largest norm over a box
    of voxels is reached at a corner: checking the 8 corners covers every voxel.
    """
    corners = np.array([[*c, 1.0] for c in itertools.product(*[(0, n - 1) for n in shape])])
    return float(np.linalg.norm((corners @ (a - b).T)[:, :3], axis=1).max())


def assert_same_in_world(ours: Path, theirs: Path | nib.Nifti1Image, *, exact: bool = True,
                          mm: float = 1e-3) -> None:
    a, b = nib.load(ours), (theirs if isinstance(theirs, nib.Nifti1Image) else nib.load(theirs))
    va, aa = _canonical(a)
    vb, ab = _canonical(b)
    assert va.shape == vb.shape
    assert max_world_distance(aa, ab, va.shape) < mm
    if exact:
        np.testing.assert_array_equal(va, vb)
    else:
        np.testing.assert_allclose(va, vb, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not DECUBITUS.is_dir(), reason="shared data folder absent")
@pytest.mark.parametrize("position", POSITIONS)
def test_real_series_matches_dcm2niix_reference(tmp_path, position):
    out = tmp_path / f"{position}.nii.gz"
    rep = convert_series(DECUBITUS / position / "dicom", out, study=position)
    assert rep.shape == (256, 256, 35) and rep.plane == "sagittal" and rep.orientation == "PIR"
    assert rep.spacing == pytest.approx((1.015625, 1.015625, 4.8), abs=1e-4)
    assert rep.slices_dropped == [] and len(rep.slices_used) == 35
    assert_same_in_world(out, DECUBITUS / position / "dcm2niix.nii.gz")


def _dcm2niix() -> str:
    found = shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or shutil.which("dcm2niix")
    assert found, "dcm2niix not installed: pip install dcm2niix (a test dependency)"
    return found


def run_dcm2niix(dicom_dir: Path, out_dir: Path, *options: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([_dcm2niix(), "-z", "y", "-b", "n", "-f", "ref", *options, "-o", str(out_dir), str(dicom_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (nii,) = out_dir.glob("*.nii.gz")
    return nii


QUIRKS = {
    "clean": dict(),
    "reversed_instances": dict(instance_order="descending"),
    "shuffled_instances": dict(instance_order="shuffled", file_names="uid"),
    "unequal_pixel_spacing": dict(pixel_spacing=(0.9, 0.45)),
    "integer_rescale": dict(rescale=(2.0, -100.0)),
    "fractional_rescale": dict(rescale=(0.37, 12.5)),
    "tilted_sagittal": dict(orientation=tilted_sagittal(11.0), step=3.3),
    "negative_step": dict(step=-4.5),
}


@pytest.mark.parametrize("quirk", list(QUIRKS))
def test_synthetic_quirk_matches_dcm2niix(tmp_path, quirk):
    write_series(tmp_path / "dicom", make_volume(10, 40, 32), **QUIRKS[quirk])
    ours = tmp_path / "ours.nii.gz"
    convert_series(tmp_path / "dicom", ours)
    theirs = run_dcm2niix(tmp_path / "dicom", tmp_path / "dcm2niix")
    assert_same_in_world(ours, theirs, exact="fractional" not in quirk)
