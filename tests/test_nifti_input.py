"""NIfTI inputs skip conversion, not the checks: 3-D, finite, oriented, sagittal; then copied, linked or compressed."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from batchseg.errors import StudyError
from batchseg.nifti_input import check_nifti, header_facts, place_nifti

# RAS affines: slices 4 mm apart along x (sagittal), along z (axial); in-plane 0.7 mm.
SAGITTAL = np.diag([4.0, 0.7, 0.7, 1.0])
AXIAL = np.diag([0.7, 0.7, 4.0, 1.0])


def write(path: Path, data: np.ndarray, affine: np.ndarray = SAGITTAL, *, codes: int = 1) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=codes)
    image.set_qform(affine, code=codes)
    nib.save(image, path)
    return path


def volume(shape=(12, 40, 32), dtype=np.int16) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 997).reshape(shape).astype(dtype)


def refusal(path: Path) -> StudyError:
    with pytest.raises(StudyError) as caught:
        check_nifti(path, study="sub-01")
    assert caught.value.message.startswith("study sub-01: ") and "\n" not in caught.value.message
    return caught.value


def test_a_good_sagittal_volume_is_copied_byte_for_byte(tmp_path: Path) -> None:
    source = write(tmp_path / "sub-01_T2w.nii.gz", volume())
    report = place_nifti(source, tmp_path / "out.nii.gz", study="sub-01")
    assert (tmp_path / "out.nii.gz").read_bytes() == source.read_bytes()
    assert report.placed == "copied" and report.plane == "sagittal" and report.slice_axis == 0
    assert report.shape == (12, 40, 32) and np.allclose(report.spacing, (4.0, 0.7, 0.7))


def test_link_places_a_symlink(tmp_path: Path) -> None:
    source = write(tmp_path / "sub-01_T2w.nii.gz", volume())
    report = place_nifti(source, tmp_path / "out.nii.gz", link=True)
    assert (tmp_path / "out.nii.gz").is_symlink() and report.placed == "linked"
    assert (tmp_path / "out.nii.gz").resolve() == source.resolve()


def test_an_uncompressed_nii_is_compressed_as_it_is(tmp_path: Path) -> None:
    source = write(tmp_path / "sub-01_T2w.nii", volume())
    report = place_nifti(source, tmp_path / "out.nii.gz", link=True)
    assert report.placed == "compressed" and not (tmp_path / "out.nii.gz").is_symlink()
    assert gzip.decompress((tmp_path / "out.nii.gz").read_bytes()) == source.read_bytes()


def test_the_slice_axis_is_the_coarsest_else_the_third(tmp_path: Path) -> None:
    sag_last = np.array([[0, 0, 4.0, 0], [0.7, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 0, 1]])  # (y, z, x) storage
    facts = header_facts(write(tmp_path / "a.nii.gz", volume((40, 32, 12)), sag_last))
    assert (facts.slice_axis, facts.plane, facts.n_slices) == (2, "sagittal", 12)
    iso = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    assert header_facts(write(tmp_path / "b.nii.gz", volume((20, 20, 20)), iso)).plane == "sagittal"


@pytest.mark.parametrize("case,error_class,words", [
    ("axial", "input.geometry", "no sagittal stack"),
    ("four_d", "input.geometry", "one 3-D volume"),
    ("one_slice", "input.geometry", "one slice"),
    ("no_orientation", "input.geometry", "neither an sform nor a qform"),
    ("nan", "input.bad_nifti", "NaN or infinite"),
    ("truncated", "input.bad_nifti", "truncated"),
    ("garbage", "input.bad_nifti", "not a readable NIfTI"),
    ("missing", "input.missing", "does not exist"),
])
def test_bad_inputs_are_refused_with_their_class(tmp_path: Path, case: str, error_class: str, words: str) -> None:
    path = tmp_path / "sub-01_T2w.nii.gz"
    if case == "axial":
        write(path, volume((40, 32, 12)), AXIAL)
    elif case == "four_d":
        write(path, volume((12, 40, 32, 2)))
    elif case == "one_slice":
        write(path, volume((1, 40, 32)))
    elif case == "no_orientation":
        write(path, volume(), codes=0)
    elif case == "nan":
        data = volume(dtype=np.float32)
        data[3, 4, 5] = np.nan
        data[0, 0, 0] = np.inf
        write(path, data)
    elif case == "truncated":
        whole = write(tmp_path / "whole.nii.gz", volume()).read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif case == "garbage":
        path.write_bytes(b"not a nifti file at all" * 20)
    error = refusal(path)
    assert error.error_class == error_class and words in error.message, error.message
    if case == "nan":
        assert "2 NaN or infinite voxel(s)" in error.message


def test_a_refused_input_leaves_nothing_at_the_destination(tmp_path: Path) -> None:
    source = write(tmp_path / "sub-01_T2w.nii.gz", volume((40, 32, 12)), AXIAL)
    with pytest.raises(StudyError):
        place_nifti(source, tmp_path / "out.nii.gz")
    assert not (tmp_path / "out.nii.gz").exists()
