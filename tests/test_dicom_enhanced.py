"""Enhanced multi-frame DICOM: frames placed by their functional groups, through the classic series' rules.

Two kinds of evidence: enhanced files built from classic series (synthetic, and the real decubitus series when
the shared data is there) must convert to the very volume and affine of their classic series; real enhanced files
from public test sets (tests/data/enhanced, see its README) must match dcm2niix.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from batchseg.dicom import convert_series, read_series
from batchseg.errors import StudyError
from tests.dicom_factory import AXIAL, make_volume, tilted_sagittal, write_enhanced, write_series
from tests.test_dicom_reference import DECUBITUS, POSITIONS, assert_same_in_world, max_world_distance, run_dcm2niix

DATA = Path(__file__).parent / "data" / "enhanced"
QA = DATA / "dcm_qa_enh"
D2N = DATA / "dicom2nifti"


def _refused(cls: str, *args, **kwargs) -> StudyError:
    with pytest.raises(StudyError) as info:
        data, _, rep = read_series(*args, **kwargs)
        pytest.fail(f"converted {data.shape} instead of refusing")
    assert info.value.error_class == cls, str(info.value)
    return info.value


def _assert_converts_like(classic: Path, enhanced: Path, **kwargs) -> None:
    """Same values, type, shape, spacing and affine (every voxel within 1e-4 mm) as the classic series."""
    d1, a1, r1 = read_series(classic, **kwargs)
    d2, a2, r2 = read_series(enhanced, **kwargs)
    assert d2.shape == d1.shape and d2.dtype == d1.dtype
    np.testing.assert_array_equal(d2, d1)
    assert max_world_distance(a1, a2, d1.shape) < 1e-4
    assert r2.spacing == pytest.approx(r1.spacing, abs=1e-6)
    assert (r2.orientation, r2.plane, r2.series_uid) == (r1.orientation, r1.plane, r1.series_uid)
    assert len(r2.slices_used) == len(r1.slices_used)


def _tilted(folder: Path, **kwargs):
    return write_series(folder, make_volume(10, 24, 20), orientation=tilted_sagittal(11.0), step=3.3,
                        pixel_spacing=(0.7, 0.55), **kwargs)


# ---------------------------------------------------------------- built from classic series


@pytest.mark.parametrize("variant", ["shared geometry", "per-frame geometry", "frames reversed", "frames shuffled",
                                     "RLE compressed"])
def test_enhanced_converts_like_its_classic_series(tmp_path, variant):
    s = _tilted(tmp_path / "classic")
    n = len(s.paths)
    kwargs = {"shared geometry": {}, "per-frame geometry": {"shared": ()},
              "frames reversed": {"order": list(range(n))[::-1]},
              "frames shuffled": {"order": [3, 7, 0, 9, 1, 5, 2, 8, 6, 4], "shared": ("PixelMeasuresSequence",)},
              "RLE compressed": {"transfer_syntax": RLELossless}}[variant]
    write_enhanced(s.paths, tmp_path / "enhanced" / "series.dcm", **kwargs)
    _assert_converts_like(tmp_path / "classic", tmp_path / "enhanced")
    data, affine, _ = read_series(tmp_path / "enhanced")
    np.testing.assert_array_equal(data, s.expected_data())
    np.testing.assert_allclose(affine, s.ras_affine(), atol=1e-5)


def test_rescale_is_applied_per_frame(tmp_path):
    s = write_series(tmp_path / "classic", make_volume(4, 16, 12))
    for k, p in enumerate(s.paths):
        ds = pydicom.dcmread(p)
        ds.RescaleSlope, ds.RescaleIntercept = f"{0.5 + k}", f"{-3 * k}"
        ds.save_as(p)
    write_enhanced(s.paths, tmp_path / "enhanced" / "series.dcm", order=[2, 0, 3, 1])
    _assert_converts_like(tmp_path / "classic", tmp_path / "enhanced")
    data, _, rep = read_series(tmp_path / "enhanced")
    np.testing.assert_allclose(data, s.expected_data() * (0.5 + np.arange(4)) - 3 * np.arange(4), rtol=1e-6)
    assert any("rescale" in w for w in rep.warnings)


def test_the_stack_is_chosen_as_for_a_classic_series(tmp_path):
    """Frames of two orientations in one file (a localizer's way): the required plane's stack, the others dropped."""
    sag = write_series(tmp_path / "classic", make_volume(6, 16, 16, seed=1))
    ax = write_series(tmp_path / "classic", make_volume(9, 16, 16, seed=2), orientation=AXIAL, name_prefix="ax",
                      series_uid=sag.series_uid)
    write_enhanced(sag.paths + ax.paths, tmp_path / "enhanced" / "loc.dcm", shared=("PixelMeasuresSequence",))
    for plane in ("sagittal", None):
        _assert_converts_like(tmp_path / "classic", tmp_path / "enhanced", require_plane=plane)
    data, _, rep = read_series(tmp_path / "enhanced", require_plane="sagittal")
    np.testing.assert_array_equal(data, sag.expected_data())
    assert len(rep.slices_dropped) == 9 and all("axial" in d["reason"] for d in rep.slices_dropped)
    assert rep.slices_dropped[0]["file"] == "loc.dcm frame 7"
    _, _, rep_any = read_series(tmp_path / "enhanced", require_plane=None)
    assert rep_any.plane == "axial"


def test_a_gap_between_frames_is_named_by_frame(tmp_path):
    s = write_series(tmp_path / "classic", make_volume(6, 16, 12))
    write_enhanced(s.paths[:3] + s.paths[4:], tmp_path / "enhanced" / "series.dcm")
    err = _refused("input.geometry", tmp_path / "enhanced")
    assert "missing slice" in err.message and "series.dcm frame 3" in err.message and "frame 4" in err.message


def test_two_echoes_are_refused_as_4d(tmp_path):
    s = write_series(tmp_path / "classic", make_volume(6, 16, 12))
    write_enhanced(s.paths, tmp_path / "enhanced" / "me.dcm", echoes=(30.0, 90.0))
    err = _refused("input.geometry", tmp_path / "enhanced")
    assert "4-D" in err.message and "2 volumes at the same 6 positions" in err.message
    assert "echo time" in err.message and "me.dcm frame 1" in err.message


def test_equal_frames_at_one_position_are_still_two_volumes(tmp_path):
    """Two frames of one file at one position are two acquisitions even when their pixels agree."""
    s = write_series(tmp_path / "classic", make_volume(4, 16, 12, high=1))  # every pixel 0: echo 2 = echo 1 // 2
    write_enhanced(s.paths, tmp_path / "enhanced" / "me.dcm", echoes=(30.0, 90.0))
    assert "4-D" in _refused("input.geometry", tmp_path / "enhanced").message


def test_a_frame_without_its_position_is_named(tmp_path):
    s = write_series(tmp_path / "classic", make_volume(4, 16, 12))
    path = write_enhanced(s.paths, tmp_path / "enhanced" / "series.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    ds.save_as(path)
    err = _refused("input.geometry", tmp_path / "enhanced")
    assert "series.dcm frame 3 lacks a valid ImagePositionPatient" in err.message


def test_fewer_functional_group_items_than_frames(tmp_path):
    s = write_series(tmp_path / "classic", make_volume(4, 16, 12))
    path = write_enhanced(s.paths, tmp_path / "enhanced" / "series.dcm")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 5
    ds.save_as(path)
    assert "series.dcm" in _refused("input.bad_dicom", tmp_path / "enhanced").message


def test_a_cut_enhanced_file_is_refused(tmp_path):
    s = write_series(tmp_path / "classic", make_volume(4, 16, 12))
    path = write_enhanced(s.paths, tmp_path / "enhanced" / "series.dcm")
    path.write_bytes(path.read_bytes()[:-200])  # the last frame loses its last rows
    assert "series.dcm" in _refused("input.bad_dicom", tmp_path / "enhanced").message


@pytest.mark.skipif(not DECUBITUS.is_dir(), reason="shared data folder absent")
@pytest.mark.parametrize("position", POSITIONS)
def test_enhanced_built_from_a_real_series(tmp_path, position):
    classic = DECUBITUS / position / "dicom"
    write_enhanced(sorted(classic.iterdir()), tmp_path / "enhanced" / "series.dcm")
    _assert_converts_like(classic, tmp_path / "enhanced")
    convert_series(tmp_path / "enhanced", tmp_path / "ours.nii.gz")
    assert_same_in_world(tmp_path / "ours.nii.gz", DECUBITUS / position / "dcm2niix.nii.gz")


def test_enhanced_built_from_a_series_matches_dcm2niix(tmp_path):
    s = _tilted(tmp_path / "classic", rescale=(2.0, -10.0))
    write_enhanced(s.paths, tmp_path / "enhanced" / "series.dcm", order=[5, 1, 8, 0, 3, 9, 2, 7, 4, 6])
    convert_series(tmp_path / "enhanced", tmp_path / "ours.nii.gz")
    assert_same_in_world(tmp_path / "ours.nii.gz", run_dcm2niix(tmp_path / "enhanced", tmp_path / "dcm2niix"))


# ---------------------------------------------------------------- real enhanced files


def test_real_siemens_xa_frames_match_the_dcm2niix_reference(tmp_path):
    """dcm_qa_enh's Siemens XA10 time point 1: 6 axial frames, against dcm2niix's stored volume 1."""
    convert_series(QA / "Siemens_XA10", tmp_path / "ours.nii.gz", require_plane=None,
                   files=[QA / "Siemens_XA10" / "6_1.dcm"])
    ref = nib.load(QA / "Ref" / "Siemens_REST1_w_SMS_PF7-8_6.nii").slicer[..., 0]
    assert_same_in_world(tmp_path / "ours.nii.gz", ref, mm=1e-4)


def test_real_time_points_in_one_folder_are_refused_as_4d():
    err = _refused("input.geometry", QA / "Siemens_XA10", require_plane=None)
    assert "4-D data: 2 volumes at the same 6 positions" in err.message and "temporal position" in err.message


def test_real_philips_field_map_is_refused_as_4d():
    """Magnitude and field map frames at the same 32 positions in one file."""
    err = _refused("input.geometry", QA / "Philips", require_plane=None)
    assert "4-D data: 2 volumes at the same 32 positions" in err.message and "IM_0027_fMAP.dcm" in err.message


def test_real_philips_sagittal_matches_dcm2niix(tmp_path):
    """Per-frame fractional rescale slopes; dcm2niix -p n applies the same DICOM rescale (not Philips' private one)."""
    folder = D2N / "philips_enhanced_anatomical"
    rep = convert_series(folder, tmp_path / "ours.nii.gz")
    assert rep.plane == "sagittal" and rep.shape == (256, 256, 8) and rep.dtype == "float32"
    assert_same_in_world(tmp_path / "ours.nii.gz", run_dcm2niix(folder, tmp_path / "dcm2niix", "-p", "n"),
                         exact=False, mm=1e-4)


def test_real_siemens_per_frame_groups_match_dcm2niix(tmp_path):
    """Every functional group in the frames, none shared; an oblique axial stack."""
    folder = D2N / "siemens_multiframe_anatomical"
    rep = convert_series(folder, tmp_path / "ours.nii.gz", require_plane="axial")
    assert rep.shape == (256, 256, 8)
    assert_same_in_world(tmp_path / "ours.nii.gz", run_dcm2niix(folder, tmp_path / "dcm2niix"))
