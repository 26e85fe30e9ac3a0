"""`batchseg convert` as a user types it: the output is whole or absent, several series are named, and nothing
from a file name or a DICOM tag reaches the terminal raw."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from batchseg.dicom import convert_series
from batchseg.errors import StudyError
from tests.conftest import batchseg
from tests.dicom_factory import make_volume, write_series, write_slice

OLD = b"a file the user had here before"


# ---------------------------------------------------------------- the output file


@pytest.mark.parametrize("name", ["out.txt", "out.nii.gz.tmp"])
def test_an_output_name_that_is_not_nifti_is_a_one_line_error(tmp_path, name):
    write_series(tmp_path / "s", make_volume(4, 16, 12))
    result = batchseg("convert", str(tmp_path / "s"), str(tmp_path / name), check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and ".nii" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name, gzipped", [("o.nii", False), ("O.NII.GZ", True)])
def test_both_nifti_forms_are_written(tmp_path, name, gzipped):
    s = write_series(tmp_path / "s", make_volume(4, 16, 12))
    batchseg("convert", str(tmp_path / "s"), str(tmp_path / name))
    img = nib.load(tmp_path / name)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), s.expected_data())
    assert ((tmp_path / name).read_bytes()[:2] == b"\x1f\x8b") == gzipped
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "s"]), "no temporary file left"


def test_a_refused_conversion_keeps_the_file_at_out(tmp_path):
    s = write_series(tmp_path / "s", make_volume(6, 16, 12))
    s.paths[2].unlink()
    (tmp_path / "o.nii.gz").write_bytes(OLD)
    result = batchseg("convert", str(tmp_path / "s"), str(tmp_path / "o.nii.gz"), check=False)
    assert result.returncode == 1 and "input.geometry" in result.stderr
    assert (tmp_path / "o.nii.gz").read_bytes() == OLD


def test_a_write_that_fails_midway_keeps_the_file_at_out(tmp_path, monkeypatch):
    """A full disk in the middle of the write: OUT keeps its old bytes throughout, no partial file remains."""
    write_series(tmp_path / "s", make_volume(6, 16, 12))
    out = tmp_path / "o.nii.gz"
    out.write_bytes(OLD)
    seen = []

    def full_disk(self, file_map, **kwargs):
        file_map["image"].fileobj.write(b"\0" * 1000)
        seen.append(out.read_bytes())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", full_disk)
    with pytest.raises(StudyError) as info:
        convert_series(tmp_path / "s", out, study="5")
    assert info.value.error_class == "output.io" and "study 5" in info.value.message
    assert seen == [OLD], "OUT was touched while the new file was being written"
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.nii.gz", "s"], "no temporary file left"


def test_a_successful_conversion_replaces_out(tmp_path):
    s = write_series(tmp_path / "s", make_volume(4, 16, 12))
    (tmp_path / "o.nii.gz").write_bytes(OLD)
    os.chmod(tmp_path / "o.nii.gz", 0o640)
    convert_series(tmp_path / "s", tmp_path / "o.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "o.nii.gz").dataobj), s.expected_data())


# ---------------------------------------------------------------- several series


def test_convert_names_the_series_of_a_mixed_folder_and_converts_the_one_asked(tmp_path):
    a = write_series(tmp_path / "s", make_volume(5, 16, 12, seed=1), name_prefix="a")
    b = write_series(tmp_path / "s", make_volume(7, 16, 12, seed=2), name_prefix="b", origin=(-20.0, -30.0, 40.0))
    result = batchseg("convert", str(tmp_path / "s"), str(tmp_path / "o.nii.gz"), check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "input.mixed_series" in result.stderr and "2 series" in result.stderr
    assert a.series_uid in result.stderr and b.series_uid in result.stderr and "--series" in result.stderr
    assert not (tmp_path / "o.nii.gz").exists()
    report = json.loads(batchseg("convert", str(tmp_path / "s"), str(tmp_path / "o.nii.gz"),
                                 "--series", b.series_uid, "--json").stdout)
    assert report["series_uid"] == b.series_uid and report["shape"] == [12, 16, 7]
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "o.nii.gz").dataobj), b.expected_data())


# ---------------------------------------------------------------- nothing raw on the terminal

ESC = "\x1b]0;owned\x07\x1b[2J\u202e"  # retitle the terminal, clear it, reverse the text that follows


def _assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, repr(text)
    assert "\\x1b" in text


def test_a_file_name_with_control_characters_is_shown_escaped(tmp_path):
    write_series(tmp_path / "s", make_volume(4, 16, 12))
    (tmp_path / "s" / f"{ESC}.dcm").write_bytes(b"")
    result = batchseg("convert", str(tmp_path / "s"), str(tmp_path / "o.nii.gz"), check=False)
    assert result.returncode == 1 and "input.bad_dicom" in result.stderr
    _assert_escaped(result.stderr)


def test_a_dicom_tag_with_control_characters_is_shown_escaped(tmp_path):
    write_series(tmp_path / "s", make_volume(4, 16, 12), name_prefix="a")
    b = write_series(tmp_path / "s", make_volume(4, 16, 12), name_prefix="b")
    for p in b.paths:
        ds = pydicom.dcmread(p)
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, so that the tag holds the characters themselves
        ds.SeriesDescription = f"T2{ESC}"
        ds.save_as(p)
    result = batchseg("convert", str(tmp_path / "s"), str(tmp_path / "o.nii.gz"), check=False)
    assert "input.mixed_series" in result.stderr
    _assert_escaped(result.stderr)


def test_the_output_name_and_warnings_are_shown_escaped(tmp_path):
    s = write_series(tmp_path / "s", make_volume(6, 16, 12))
    write_slice(tmp_path / "s" / f"small{ESC}.dcm", make_volume(1, 8, 8)[0], like=s.paths[0],
                position=s.position(30), pixel_spacing=(1.6, 1.2))
    result = batchseg("convert", str(tmp_path / "s"), str(tmp_path / f"o{ESC}.nii.gz"))
    assert "warning: dropped 1 slice(s) of another size" in result.stderr
    _assert_escaped(result.stdout)
    _assert_escaped(result.stderr)
    assert (tmp_path / f"o{ESC}.nii.gz").is_file()
