"""A file that claims to be a DICOM image and cannot be read whole fails the series; it is never dropped.

A dropped end slice gives a volume one slice shorter that passes every geometry check, so each cut of the first
and the last file of a stack, in every region of the file, must be refused as input.bad_dicom naming the file.
"""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset

from batchseg.dicom import read_series
from batchseg.errors import StudyError
from tests.dicom_factory import make_volume, write_series


def _regions(raw: bytes) -> dict[str, int]:
    """Where to cut an explicit-VR little-endian file written by the factory: one offset per region."""
    meta_end = 144 + int.from_bytes(raw[140:144], "little")  # (0002,0000) holds the meta group's length
    ipp = raw.index(b"\x20\x00\x32\x00DS")  # ImagePositionPatient: tag, VR, 2-byte length, value
    ipp_end = ipp + 8 + int.from_bytes(raw[ipp + 6:ipp + 8], "little")
    pix = raw.index(b"\xe0\x7f\x10\x00")  # PixelData: tag, VR, 2 reserved bytes, 4-byte length, value
    return {
        "empty": 0,
        "inside the preamble": 64,
        "before the DICM marker": 130,
        "inside the meta header": (132 + meta_end) // 2,
        "at the dataset's start": meta_end + 3,
        "inside the element before the position": ipp - 1,
        "right before the position": ipp,
        "inside the position value": ipp_end - 3,
        "right after the position": ipp_end,
        "right before the pixel data": pix,
        "inside the pixel data header": pix + 6,
        "at the pixel data's start": pix + 12,
        "inside the pixel data": (pix + 12 + len(raw)) // 2,
        "one byte short": len(raw) - 1,
    }


def _series(tmp_path, naming: str):
    s = write_series(tmp_path / "s", make_volume(5, 16, 12), file_names="uid" if naming == "UID" else "instance")
    if naming != ".dcm":  # a PACS export's names: IM_0001, or the SOP instance UID
        for k, p in enumerate(s.paths):
            s.paths[k] = p.rename(p.with_name(p.stem if naming == "UID" else f"IM_{int(p.stem):04d}"))
    return s


def _refused(folder, bad_name: str) -> StudyError:
    with pytest.raises(StudyError) as info:
        data, _, rep = read_series(folder, study="42")
        pytest.fail(f"converted {data.shape} instead of refusing; used {rep.slices_used}")
    err = info.value
    assert err.error_class == "input.bad_dicom", str(err)
    assert bad_name in err.message and "study 42" in err.message, err.message
    return err


REGIONS = ["empty", "inside the preamble", "before the DICM marker", "inside the meta header",
           "at the dataset's start", "inside the element before the position", "right before the position",
           "inside the position value", "right after the position", "right before the pixel data",
           "inside the pixel data header", "at the pixel data's start", "inside the pixel data", "one byte short"]


@pytest.mark.parametrize("naming", [".dcm", "no extension", "UID"])
@pytest.mark.parametrize("end", ["first", "last"])
@pytest.mark.parametrize("region", REGIONS)
def test_a_cut_end_slice_fails_the_series(tmp_path, region, end, naming):
    s = _series(tmp_path, naming)
    target = s.paths[0] if end == "first" else s.paths[-1]
    raw = target.read_bytes()
    regions = _regions(raw)
    assert list(regions) == REGIONS
    target.write_bytes(raw[:regions[region]])
    _refused(tmp_path / "s", target.name)


def _without_preamble(path) -> None:
    """Rewrite as old-style DICOM: no preamble, no DICM, no meta header, implicit VR."""
    ds = pydicom.dcmread(path)
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)


@pytest.mark.parametrize("end", ["first", "last"])
@pytest.mark.parametrize("keep", ["sop class", "before the position", "inside the position", "before the pixels",
                                  "inside the pixels", "one byte short"])
def test_a_cut_end_slice_without_preamble_fails_the_series(tmp_path, keep, end):
    """Old-style files have no marker: once the cut leaves the SOP class readable, the file says it is an image."""
    s = _series(tmp_path, "no extension")
    for p in s.paths:
        _without_preamble(p)
    target = s.paths[0] if end == "first" else s.paths[-1]
    raw = target.read_bytes()
    sop = raw.index(b"\x08\x00\x16\x00")  # SOPClassUID: tag, 4-byte length, value
    ipp = raw.index(b"\x20\x00\x32\x00")
    pix = raw.index(b"\xe0\x7f\x10\x00")
    cut = {"sop class": sop + 8 + int.from_bytes(raw[sop + 4:sop + 8], "little"), "before the position": ipp,
           "inside the position": ipp + 10, "before the pixels": pix, "inside the pixels": pix + 100,
           "one byte short": len(raw) - 1}[keep]
    target.write_bytes(raw[:cut])
    _refused(tmp_path / "s", target.name)


def test_a_bad_file_mid_stack_is_named_instead_of_a_gap(tmp_path):
    s = write_series(tmp_path / "s", make_volume(6, 16, 12))
    s.paths[3].write_bytes(s.paths[3].read_bytes()[:300])
    err = _refused(tmp_path / "s", s.paths[3].name)
    assert "missing slice" not in err.message and "cut short" in err.message


def test_several_bad_files_are_counted(tmp_path):
    s = write_series(tmp_path / "s", make_volume(6, 16, 12))
    for p in s.paths[:3]:
        p.write_bytes(b"")
    err = _refused(tmp_path / "s", s.paths[0].name)
    assert "2 more" in err.message


def test_junk_is_ignored_and_recorded(tmp_path):
    """Files that make no claim to be DICOM images stay ignored, even empty ones with a foreign name."""
    s = write_series(tmp_path / "s", make_volume(4, 16, 12))
    junk = {"README.txt": b"notes\n", ".DS_Store": b"\0\0\0\1Bud1" + bytes(200), "empty.txt": b"",
            ".hidden": b"", "Thumbs.db": bytes(range(256)), "scan.jpg": b"\xff\xd8\xff\xe0" + bytes(100)}
    for name, content in junk.items():
        (tmp_path / "s" / name).write_bytes(content)
    data, _, rep = read_series(tmp_path / "s")
    assert data.shape[2] == len(s.paths)
    assert {d["file"] for d in rep.files_ignored} == set(junk)
    assert all(d["reason"] == "not DICOM" for d in rep.files_ignored)


def test_a_cut_presentation_state_is_not_an_image(tmp_path):
    """A cut file whose readable part says it is no image (here a presentation state) does not fail the series."""
    s = write_series(tmp_path / "s", make_volume(4, 16, 12))
    ds = pydicom.dcmread(s.paths[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.GrayscaleSoftcopyPresentationStateStorage
    for keyword in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelData",
                    "PixelSpacing", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(ds, keyword)
    ds.ContentDescription = "NOTE" * 15
    ds.save_as(tmp_path / "s" / "pr.dcm")
    raw = (tmp_path / "s" / "pr.dcm").read_bytes()
    (tmp_path / "s" / "pr.dcm").write_bytes(raw[:-5])
    data, _, rep = read_series(tmp_path / "s")
    assert data.shape[2] == 4
    (ignored,) = rep.files_ignored
    assert ignored["file"] == "pr.dcm" and "Presentation State" in ignored["reason"]
