"""Compressed transfer syntaxes: each compressed twin converts to the uncompressed series' values."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from batchseg.dicom import read_series
from tests.dicom_factory import make_volume, write_series

SIGNED = make_volume(dtype=np.int16, high=1500)
UNSIGNED = make_volume(dtype=np.uint16, high=4000)
BYTES = make_volume(dtype=np.uint8, high=200)

LOSSLESS = [
    (RLELossless, SIGNED),
    (RLELossless, UNSIGNED),
    (JPEGLSLossless, SIGNED),
    (JPEGLSLossless, UNSIGNED),
    (JPEG2000Lossless, SIGNED),
    (JPEG2000Lossless, UNSIGNED),
    (JPEGLosslessSV1, UNSIGNED),
    (JPEGLosslessSV1, BYTES),
    (JPEGLossless, UNSIGNED),
]


def _ids(case):
    return f"{case[0].name.split(' (')[0]}-{case[1].dtype}"


@pytest.mark.parametrize("case", LOSSLESS, ids=[_ids(c) for c in LOSSLESS])
def test_lossless_twin_has_identical_values(tmp_path, case):
    ts, volume = case
    plain = write_series(tmp_path / "plain", volume)
    write_series(tmp_path / "twin", volume, transfer_syntax=ts)
    assert pydicom.dcmread(next((tmp_path / "twin").iterdir())).file_meta.TransferSyntaxUID == ts
    ref, ref_aff, _ = read_series(tmp_path / "plain")
    data, aff, rep = read_series(tmp_path / "twin")
    np.testing.assert_array_equal(data, ref)
    np.testing.assert_array_equal(data, plain.expected_data())
    assert data.dtype == ref.dtype
    np.testing.assert_allclose(aff, ref_aff)


LOSSY = [
    (JPEGBaseline8Bit, BYTES, 12, 2.0),
    (JPEG2000, SIGNED, 60, 6.0),
    (JPEGLSNearLossless, SIGNED, 2, 2.0),  # near lossless: every value within the error bound
]


@pytest.mark.parametrize("case", LOSSY, ids=[_ids(c) for c in LOSSY])
def test_lossy_twin_is_close(tmp_path, case):
    ts, volume, max_err, mean_err = case
    plain = write_series(tmp_path / "plain", volume)
    write_series(tmp_path / "twin", volume, transfer_syntax=ts)
    data, _, rep = read_series(tmp_path / "twin")
    diff = np.abs(data.astype(float) - plain.expected_data())
    assert diff.max() <= max_err and diff.mean() <= mean_err
    assert diff.max() > 0 or ts == JPEGLSNearLossless  # it really was lossy
    assert rep.shape == (48, 64, 12)


def test_corrupt_compressed_stream_is_bad_dicom(tmp_path):
    s = write_series(tmp_path / "s", SIGNED, transfer_syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(s.paths[5])
    from pydicom.encaps import encapsulate, generate_frames

    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    ds.save_as(s.paths[5])
    with pytest.raises(Exception) as info:
        read_series(tmp_path / "s")
    assert getattr(info.value, "error_class", None) == "input.bad_dicom"
    assert s.paths[5].name in str(info.value)
