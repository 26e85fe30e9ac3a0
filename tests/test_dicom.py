"""DICOM -> NIfTI on synthetic series: geometry, slice-set rules, errors, output file."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    MediaStorageDirectoryStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from batchseg.dicom import ConversionReport, convert_series, read_series
from batchseg.errors import StudyError
from tests.dicom_factory import AXIAL, CORONAL, SAGITTAL, make_volume, tilted_sagittal, write_series, write_slice


def _raises(cls: str, fn, *args, **kwargs) -> StudyError:
    with pytest.raises(StudyError) as info:
        fn(*args, **kwargs)
    assert info.value.error_class == cls, str(info.value)
    assert "\n" not in info.value.message
    return info.value


# ---------------------------------------------------------------- geometry


def test_clean_sagittal_series_geometry_and_values(tmp_path):
    s = write_series(tmp_path / "s", pixel_spacing=(0.8, 0.6), step=4.0, slice_thickness=3.0)
    data, affine, rep = read_series(tmp_path / "s")
    assert data.shape == (48, 64, 12)  # (cols, rows, slices): DICOM storage order kept
    np.testing.assert_array_equal(data, s.expected_data())
    assert data.dtype == np.int16 and rep.dtype == "int16"
    np.testing.assert_allclose(affine, s.ras_affine(), atol=1e-6)
    # Row spacing (PixelSpacing[0]) is along j, column spacing along i; step from positions, not SliceThickness.
    assert rep.spacing == pytest.approx((0.6, 0.8, 4.0))
    assert rep.orientation == "PIR" and rep.plane == "sagittal"
    assert rep.shape == (48, 64, 12)
    assert rep.slices_used == [p.name for p in s.paths]
    assert rep.slices_dropped == [] and rep.warnings == []
    assert len(rep.stacks) == 1 and rep.stacks[0]["chosen"] and rep.stacks[0]["n_slices"] == 12


def test_voxel_world_positions_follow_the_dicom_definition(tmp_path):
    """Voxel (i, j, k) = column i, row j of slice k sits at IPP_k + i*dc*row_cos + j*dr*col_cos (LPS)."""
    s = write_series(tmp_path / "s", orientation=tilted_sagittal(12.0), pixel_spacing=(0.7, 0.5), step=3.3)
    data, affine, rep = read_series(tmp_path / "s")
    for i, j, k in [(0, 0, 0), (47, 0, 0), (0, 63, 0), (5, 7, 11), (47, 63, 11)]:
        lps = s.position(k) + i * 0.5 * s.row_cos + j * 0.7 * s.col_cos
        ras = affine @ [i, j, k, 1]
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-5)
        assert data[i, j, k] == s.volume[k, j, i]
    assert rep.plane == "sagittal"


@pytest.mark.parametrize("orientation, plane, codes", [
    (SAGITTAL, "sagittal", "PIR"),
    (CORONAL, "coronal", "LIP"),
    (AXIAL, "axial", "LPS"),
    (tilted_sagittal(15.0), "sagittal", "PIR"),
    (tilted_sagittal(40.0), "oblique", None),
])
def test_plane_from_the_slice_normal(tmp_path, orientation, plane, codes):
    write_series(tmp_path / "s", orientation=orientation)
    _, _, rep = read_series(tmp_path / "s", require_plane=None)
    assert rep.plane == plane
    if codes:
        assert rep.orientation == codes


def test_required_plane_missing_fails_geometry(tmp_path):
    write_series(tmp_path / "s", orientation=AXIAL)
    err = _raises("input.geometry", read_series, tmp_path / "s", study="4711")
    assert "study 4711" in err.message and "sagittal" in err.message and "axial" in err.message
    write_series(tmp_path / "o", orientation=tilted_sagittal(40.0))
    _raises("input.geometry", read_series, tmp_path / "o")


# ---------------------------------------------------------------- slice order


@pytest.mark.parametrize("instance_order", ["descending", "shuffled", "gaps"])
@pytest.mark.parametrize("file_names", ["instance", "uid"])
def test_sorted_by_position_never_by_instance_or_name(tmp_path, instance_order, file_names):
    ref = write_series(tmp_path / "ref")
    s = write_series(tmp_path / "s", instance_order=instance_order, file_names=file_names)
    data, affine, rep = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, ref.expected_data())
    np.testing.assert_allclose(affine, ref.ras_affine(), atol=1e-6)
    assert rep.slices_used == [p.name for p in s.paths]


def test_stack_running_against_the_normal_is_sorted_ascending(tmp_path):
    """Positions written against the normal (negative step) give the same volume reversed, with a +step affine."""
    s = write_series(tmp_path / "s", step=-4.0, origin=(30.0, -30.0, 40.0))
    data, affine, rep = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, s.expected_data()[:, :, ::-1])
    assert rep.spacing[2] == pytest.approx(4.0)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose((affine @ [0, 0, 0, 1])[:3], s.position(11) * lps_to_ras, atol=1e-6)
    np.testing.assert_allclose((affine @ [0, 0, 11, 1])[:3], s.position(0) * lps_to_ras, atol=1e-6)
    assert rep.slices_used == [p.name for p in reversed(s.paths)]


# ---------------------------------------------------------------- several stacks


def test_several_stacks_convert_the_required_plane(tmp_path):
    sag = write_series(tmp_path / "s", volume=make_volume(10))
    write_series(tmp_path / "s", volume=make_volume(15, 32, 32, seed=3), orientation=AXIAL, name_prefix="ax",
                 series_uid=sag.series_uid)
    data, _, rep = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, sag.expected_data())
    assert rep.plane == "sagittal"
    assert len(rep.stacks) == 2
    assert [st["chosen"] for st in rep.stacks].count(True) == 1
    chosen = next(st for st in rep.stacks if st["chosen"])
    assert chosen["plane"] == "sagittal" and chosen["n_slices"] == 10
    assert len(rep.slices_dropped) == 15
    assert all(d["file"].startswith("ax") and "axial" in d["reason"] for d in rep.slices_dropped)
    assert any("stacks" in w for w in rep.warnings)
    # Without a required plane the largest stack wins; a required plane picks that one.
    _, _, rep_any = read_series(tmp_path / "s", require_plane=None)
    assert rep_any.plane == "axial" and rep_any.shape == (32, 32, 15)
    _, _, rep_ax = read_series(tmp_path / "s", require_plane="axial")
    assert rep_ax.plane == "axial"


def test_two_sagittal_stacks_the_larger_wins(tmp_path):
    big = write_series(tmp_path / "s", volume=make_volume(9))
    write_series(tmp_path / "s", volume=make_volume(6, seed=5), orientation=tilted_sagittal(10.0), name_prefix="t",
                 series_uid=big.series_uid)
    data, _, rep = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, big.expected_data())
    assert sorted(st["n_slices"] for st in rep.stacks) == [6, 9]
    assert {d["file"] for d in rep.slices_dropped} == {f"t{i}.dcm" for i in range(1, 7)}


# ---------------------------------------------------------------- duplicates, gaps


def test_duplicate_with_identical_pixels_is_dropped(tmp_path):
    s = write_series(tmp_path / "s")
    shutil.copy(s.paths[4], tmp_path / "s" / "copy_of_5.dcm")
    data, _, rep = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, s.expected_data())
    assert rep.slices_dropped == [{"file": "copy_of_5.dcm", "reason": "duplicate of 5.dcm"}]
    assert rep.warnings


def test_duplicate_with_different_pixels_fails(tmp_path):
    s = write_series(tmp_path / "s")
    write_slice(tmp_path / "s" / "other.dcm", s.volume[4] + 1, like=s.paths[4])
    err = _raises("input.geometry", read_series, tmp_path / "s", study="12")
    assert "5.dcm" in err.message and "other.dcm" in err.message and "study 12" in err.message


def test_missing_slice_fails_naming_the_gap(tmp_path):
    s = write_series(tmp_path / "s")
    s.paths[6].unlink()
    err = _raises("input.geometry", read_series, tmp_path / "s", study="77")
    assert "missing slice" in err.message
    assert "6.dcm" in err.message and "8.dcm" in err.message and "gap of 8 mm" in err.message


def test_irregular_spacing_fails(tmp_path):
    s = write_series(tmp_path / "s")
    s.paths[6].unlink()
    write_slice(tmp_path / "s" / "7.dcm", s.volume[6], like=s.paths[5], instance=7,
                position=s.position(6) - 1.5 * s.normal)
    err = _raises("input.geometry", read_series, tmp_path / "s")
    assert "irregular spacing" in err.message and "between 6.dcm" in err.message and "7.dcm" in err.message


def test_two_missing_slices_are_counted(tmp_path):
    s = write_series(tmp_path / "s")
    s.paths[3].unlink()
    s.paths[4].unlink()
    err = _raises("input.geometry", read_series, tmp_path / "s")
    assert "missing slices" in err.message and "gap of 12 mm" in err.message


def test_small_position_jitter_is_tolerated(tmp_path):
    s = write_series(tmp_path / "s")
    s.paths[6].unlink()
    write_slice(tmp_path / "s" / "7.dcm", s.volume[6], like=s.paths[5], instance=7,
                position=s.position(6) + 0.02 * s.normal)
    data, affine, rep = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, s.expected_data())
    assert rep.spacing[2] == pytest.approx(4.0)


def test_sheared_stack_fails(tmp_path):
    s = write_series(tmp_path / "s")
    s.paths[6].unlink()
    write_slice(tmp_path / "s" / "7.dcm", s.volume[6], like=s.paths[5], instance=7,
                position=s.position(6) + 2.0 * s.row_cos)
    _raises("input.geometry", read_series, tmp_path / "s")


def test_single_slice_fails(tmp_path):
    s = write_series(tmp_path / "s", volume=make_volume(1))
    err = _raises("input.geometry", read_series, tmp_path / "s", study="9")
    assert s.paths[0].name in err.message


def test_single_slice_after_dropping_duplicates_fails(tmp_path):
    s = write_series(tmp_path / "s", volume=make_volume(1))
    shutil.copy(s.paths[0], tmp_path / "s" / "again.dcm")
    _raises("input.geometry", read_series, tmp_path / "s")


# ---------------------------------------------------------------- sizes


def test_minority_of_another_size_is_dropped_with_a_warning(tmp_path):
    s = write_series(tmp_path / "s")
    small = make_volume(2, 32, 24, seed=9)
    for n in range(2):
        write_slice(tmp_path / "s" / f"small{n}.dcm", small[n], like=s.paths[0],
                    position=s.position(20 + n), pixel_spacing=(1.6, 1.2))
    data, _, rep = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, s.expected_data())
    assert {d["file"] for d in rep.slices_dropped} == {"small0.dcm", "small1.dcm"}
    assert any("another size" in w for w in rep.warnings)
    assert len(rep.stacks) == 2


def test_spacing_alone_makes_another_size(tmp_path):
    s = write_series(tmp_path / "s")
    write_slice(tmp_path / "s" / "odd.dcm", s.volume[0], like=s.paths[0], position=s.position(30),
                pixel_spacing=(0.9, 0.6))
    _, _, rep = read_series(tmp_path / "s")
    assert [d["file"] for d in rep.slices_dropped] == ["odd.dcm"]


def test_majority_of_another_size_fails(tmp_path):
    s = write_series(tmp_path / "s", volume=make_volume(6))
    other = make_volume(6, 32, 24, seed=4)
    for n in range(6):
        write_slice(tmp_path / "s" / f"o{n}.dcm", other[n], like=s.paths[0], position=s.position(10 + n))
    err = _raises("input.geometry", read_series, tmp_path / "s", study="5")
    assert "size" in err.message


# ---------------------------------------------------------------- files that are not slices


def _dicomdir(path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.FileSetID = "SYNTH"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
    ds.save_as(path, enforce_file_format=True)


def _presentation_state(path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "PR"
    ds.ContentLabel = "ANNOTATION"
    ds.save_as(path, enforce_file_format=True)


def test_non_dicom_and_non_image_files_are_ignored(tmp_path):
    s = write_series(tmp_path / "s")
    (tmp_path / "s" / "README").write_text("scanned on a Tuesday\n")
    (tmp_path / "s" / "README.txt").write_text("")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(range(256)))
    (tmp_path / "s" / "notes.json").write_text('{"a": 1}')
    (tmp_path / "s" / "sub").mkdir()
    _dicomdir(tmp_path / "s" / "DICOMDIR")
    _presentation_state(tmp_path / "s" / "pr.dcm")
    data, _, rep = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, s.expected_data())
    ignored = {d["file"]: d["reason"] for d in rep.files_ignored}
    assert set(ignored) == {"README", "README.txt", ".DS_Store", "notes.json", "DICOMDIR", "pr.dcm"}
    assert ignored["README"] == "not DICOM"
    assert "Presentation State" in ignored["pr.dcm"]
    assert rep.slices_dropped == []


def test_secondary_capture_without_position_is_ignored(tmp_path):
    s = write_series(tmp_path / "s")
    ds = pydicom.dcmread(s.paths[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(tmp_path / "s" / "screenshot.dcm")
    data, _, rep = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, s.expected_data())
    assert [d["file"] for d in rep.files_ignored] == ["screenshot.dcm"]


def test_dicom_without_preamble_is_still_read(tmp_path):
    """Old files lack the 128-byte preamble; they are DICOM all the same."""
    s = write_series(tmp_path / "s")
    for p in s.paths:
        ds = pydicom.dcmread(p)
        ds.preamble = None
        ds.file_meta = FileMetaDataset()
        ds.save_as(p, enforce_file_format=False, implicit_vr=True, little_endian=True)
        raw = p.read_bytes()
        assert raw[128:132] != b"DICM"
    data, _, _ = read_series(tmp_path / "s")
    np.testing.assert_array_equal(data, s.expected_data())


# ---------------------------------------------------------------- bad input


def test_missing_folder(tmp_path):
    err = _raises("input.missing", read_series, tmp_path / "nope", study="31")
    assert "study 31" in err.message


def test_folder_without_images(tmp_path):
    (tmp_path / "s").mkdir()
    _raises("input.missing", read_series, tmp_path / "s")
    (tmp_path / "s" / "README").write_text("x")
    _presentation_state(tmp_path / "s" / "pr.dcm")
    _raises("input.missing", read_series, tmp_path / "s")


@pytest.mark.parametrize("keep", [0.97, 0.5, 0.15])
def test_truncated_file_names_the_file(tmp_path, keep):
    s = write_series(tmp_path / "s")
    raw = s.paths[3].read_bytes()
    s.paths[3].write_bytes(raw[: int(len(raw) * keep)])
    err = _raises("input.bad_dicom", read_series, tmp_path / "s", study="8")
    assert s.paths[3].name in err.message and "study 8" in err.message


def test_image_without_pixel_data(tmp_path):
    s = write_series(tmp_path / "s")
    ds = pydicom.dcmread(s.paths[2])
    del ds.PixelData
    ds.save_as(s.paths[2])
    err = _raises("input.bad_dicom", read_series, tmp_path / "s")
    assert s.paths[2].name in err.message and "pixel data" in err.message


def test_garbage_after_a_dicom_preamble(tmp_path):
    s = write_series(tmp_path / "s")
    s.paths[0].write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    err = _raises("input.bad_dicom", read_series, tmp_path / "s")
    assert s.paths[0].name in err.message


def test_missing_position_tag(tmp_path):
    s = write_series(tmp_path / "s")
    ds = pydicom.dcmread(s.paths[2])
    del ds.ImagePositionPatient
    ds.save_as(s.paths[2])
    err = _raises("input.geometry", read_series, tmp_path / "s")
    assert s.paths[2].name in err.message and "ImagePositionPatient" in err.message


def test_no_study_names_the_folder(tmp_path):
    err = _raises("input.missing", read_series, tmp_path / "gone")
    assert "gone" in err.message


# ---------------------------------------------------------------- values


def test_identity_rescale_keeps_the_integer_type(tmp_path):
    s = write_series(tmp_path / "s", rescale=(1.0, 0.0))
    data, _, rep = read_series(tmp_path / "s")
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data, s.expected_data())


def test_integer_rescale_stays_integer(tmp_path):
    s = write_series(tmp_path / "s", rescale=(2.0, -100.0))
    data, _, rep = read_series(tmp_path / "s")
    assert np.issubdtype(data.dtype, np.integer)
    np.testing.assert_array_equal(data, s.expected_data().astype(np.int64) * 2 - 100)


def test_integer_rescale_beyond_int16_widens(tmp_path):
    s = write_series(tmp_path / "s", volume=make_volume(high=30000), rescale=(4.0, 10.0))
    data, _, _ = read_series(tmp_path / "s")
    assert data.dtype == np.int32
    np.testing.assert_array_equal(data, s.expected_data().astype(np.int64) * 4 + 10)


def test_fractional_rescale_gives_float32(tmp_path):
    s = write_series(tmp_path / "s", rescale=(0.25, 1.5))
    data, _, rep = read_series(tmp_path / "s")
    assert data.dtype == np.float32 and rep.dtype == "float32"
    np.testing.assert_allclose(data, s.expected_data() * 0.25 + 1.5, rtol=1e-6)


def test_rescale_that_differs_per_slice(tmp_path):
    s = write_series(tmp_path / "s", volume=make_volume(4))
    for k, p in enumerate(s.paths):
        ds = pydicom.dcmread(p)
        ds.RescaleSlope, ds.RescaleIntercept = f"{0.5 + k}", "0"
        ds.save_as(p)
    data, _, rep = read_series(tmp_path / "s")
    expected = s.expected_data() * (0.5 + np.arange(4))
    np.testing.assert_allclose(data, expected, rtol=1e-6)
    assert any("rescale" in w for w in rep.warnings)


def test_unsigned_pixels(tmp_path):
    s = write_series(tmp_path / "s", volume=make_volume(dtype=np.uint16, high=60000))
    data, _, _ = read_series(tmp_path / "s")
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, s.expected_data())


# ---------------------------------------------------------------- the file


def test_convert_writes_scanner_coded_nifti(tmp_path):
    s = write_series(tmp_path / "s")
    out = tmp_path / "out.nii.gz"
    rep = convert_series(tmp_path / "s", out, study="1")
    assert isinstance(rep, ConversionReport)
    img = nib.load(out)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_sform(), s.ras_affine(), atol=1e-4)
    np.testing.assert_allclose(img.get_qform(), s.ras_affine(), atol=1e-4)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), s.expected_data())
    assert img.header.get_zooms() == pytest.approx((0.6, 0.8, 4.0))
    assert img.header.get_xyzt_units()[0] == "mm"
    d = rep.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["shape"] == [48, 64, 12] and d["orientation"] == "PIR" and d["source"] == str(tmp_path / "s")


def test_output_is_byte_identical_across_runs(tmp_path):
    write_series(tmp_path / "s")
    convert_series(tmp_path / "s", tmp_path / "a.nii.gz")
    convert_series(tmp_path / "s", tmp_path / "b.nii.gz")
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()


def test_convert_failure_writes_nothing(tmp_path):
    s = write_series(tmp_path / "s")
    s.paths[5].unlink()
    _raises("input.geometry", convert_series, tmp_path / "s", tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()


def test_unwritable_output_is_output_io(tmp_path):
    write_series(tmp_path / "s")
    err = _raises("output.io", convert_series, tmp_path / "s", tmp_path / "no" / "such" / "dir" / "x.nii.gz",
                  study="3")
    assert "study 3" in err.message


# ---------------------------------------------------------------- refusals that say what the data is


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("keyword, value, shown", [
    ("ImageOrientationPatient", ["1", "0", "0", "0", "0", "0"], "[1, 0, 0, 0, 0, 0]"),
    ("ImageOrientationPatient", ["0", "1", "0", "0", "0", "-1", "0"], "[0, 1, 0, 0, 0, -1, 0]"),
    ("ImagePositionPatient", ["1.5", "nan", "2"], "[1.5, nan, 2]"),
    ("PixelSpacing", ["0.5", "0"], "[0.5, 0]"),
])
def test_messages_print_plain_numbers(tmp_path, keyword, value, shown):
    s = write_series(tmp_path / "s", volume=make_volume(4, 16, 12))
    ds = pydicom.dcmread(s.paths[1])
    setattr(ds, keyword, value)
    ds.save_as(s.paths[1])
    err = _raises("input.geometry", read_series, tmp_path / "s")
    assert shown in err.message and "np." not in err.message and "float64" not in err.message
    assert s.paths[1].name in err.message


def test_several_volumes_at_the_same_positions_are_named_4d(tmp_path):
    """Two echoes of one stack as classic files: 4-D data, not a 'duplicate' slice."""
    first = write_series(tmp_path / "s", volume=make_volume(5, 16, 12, seed=1), name_prefix="e1_")
    second = write_series(tmp_path / "s", volume=make_volume(5, 16, 12, seed=2), name_prefix="e2_",
                          series_uid=first.series_uid)
    for echo, series in ((1, first), (2, second)):
        for p in series.paths:
            ds = pydicom.dcmread(p)
            ds.EchoTime, ds.EchoNumbers = str(40 * echo), echo
            ds.save_as(p)
    err = _raises("input.geometry", read_series, tmp_path / "s")
    assert "4-D data: 2 volumes at the same 5 positions" in err.message
    assert "echo time" in err.message and "echo number" in err.message


def test_one_conflicting_slice_is_not_called_4d(tmp_path):
    s = write_series(tmp_path / "s", volume=make_volume(6, 16, 12))
    write_slice(tmp_path / "s" / "other.dcm", s.volume[2] + 1, like=s.paths[2])
    err = _raises("input.geometry", read_series, tmp_path / "s")
    assert "4-D" not in err.message and "share the position" in err.message


def test_a_siemens_mosaic_is_named(tmp_path):
    """A mosaic tiles a volume's slices into one image: every file sits at one position."""
    s = write_series(tmp_path / "s", volume=make_volume(3, 64, 64))
    for p in s.paths:
        ds = pydicom.dcmread(p)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.save_as(p)
    err = _raises("input.geometry", read_series, tmp_path / "s", require_plane=None)
    assert "Siemens mosaic" in err.message and s.paths[0].name in err.message
