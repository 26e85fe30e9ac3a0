"""One conversion reads one series: slices are grouped by SeriesInstanceUID before any geometry."""
from __future__ import annotations

import numpy as np
import pytest

from batchseg.dicom import read_series
from batchseg.errors import StudyError
from batchseg.inputs import StudySource
from batchseg.pipeline import StudyInput, run_study
from batchseg.segmenters import load_segmenter
from tests.dicom_factory import make_volume, write_series


def _interleaved(folder):
    """Two series of one geometry, the second half a step further along: merged, they make one regular stack of
    alternating slices, which is what the converter once produced."""
    a = write_series(folder, make_volume(6, 16, 12, seed=1), step=4.0, name_prefix="a")
    b = write_series(folder, make_volume(6, 16, 12, seed=2), step=4.0, name_prefix="b",
                     origin=a.origin + 2.0 * a.normal)
    return a, b


def test_two_interleaved_series_are_never_merged(tmp_path):
    a, b = _interleaved(tmp_path / "s")
    with pytest.raises(StudyError) as info:
        data, _, _ = read_series(tmp_path / "s", study="7")
        pytest.fail(f"merged two series into one volume of {data.shape[2]} slices")
    err = info.value
    assert err.error_class == "input.mixed_series"
    assert a.series_uid in err.message and b.series_uid in err.message and "study 7" in err.message
    assert "6 images" in err.message


@pytest.mark.parametrize("pick", [0, 1])
def test_the_series_asked_for_is_converted(tmp_path, pick):
    both = _interleaved(tmp_path / "s")
    wanted, other = both[pick], both[1 - pick]
    data, affine, rep = read_series(tmp_path / "s", series_uid=wanted.series_uid)
    np.testing.assert_array_equal(data, wanted.expected_data())
    np.testing.assert_allclose(affine, wanted.ras_affine(), atol=1e-6)
    assert rep.series_uid == wanted.series_uid
    assert rep.slices_used == [p.name for p in wanted.paths]
    assert {d["file"] for d in rep.files_ignored} == {p.name for p in other.paths}
    assert all(other.series_uid in d["reason"] for d in rep.files_ignored)


def test_a_series_that_is_not_there(tmp_path):
    a = write_series(tmp_path / "s", make_volume(4, 16, 12))
    with pytest.raises(StudyError) as info:
        read_series(tmp_path / "s", series_uid="1.2.3.4")
    assert info.value.error_class == "input.missing"
    assert "1.2.3.4" in info.value.message and a.series_uid in info.value.message


def test_a_bad_file_of_another_series_does_not_block_the_one_asked(tmp_path):
    a, b = _interleaved(tmp_path / "s")
    b.paths[0].write_bytes(b.paths[0].read_bytes()[:-10])  # cut short, its header still names series b
    data, _, rep = read_series(tmp_path / "s", series_uid=a.series_uid)
    assert data.shape[2] == 6
    assert any(d["file"] == b.paths[0].name and "unreadable" in d["reason"] for d in rep.files_ignored)
    with pytest.raises(StudyError) as info:  # asked for b, or for nothing: the bad file fails the conversion
        read_series(tmp_path / "s", series_uid=b.series_uid)
    assert info.value.error_class == "input.bad_dicom" and b.paths[0].name in info.value.message


def test_a_file_cut_inside_its_series_uid_is_not_taken_for_another_series(tmp_path):
    a, _ = _interleaved(tmp_path / "s")
    raw = a.paths[-1].read_bytes()
    uid = a.series_uid.encode()
    a.paths[-1].write_bytes(raw[:raw.index(uid) + len(uid) // 2])  # the UID read back is a prefix of a's
    with pytest.raises(StudyError) as info:
        data, _, _ = read_series(tmp_path / "s", series_uid=a.series_uid)
        pytest.fail(f"converted {data.shape[2]} of a's 6 slices")
    assert info.value.error_class == "input.bad_dicom" and a.paths[-1].name in info.value.message


def test_the_series_files_can_be_listed_across_folders(tmp_path):
    """A PACS export spreads one series over folders: the files are given, the folder only names the source."""
    s = write_series(tmp_path / "one", make_volume(6, 16, 12))
    moved = []
    for k, p in enumerate(s.paths):
        target = tmp_path / "tree" / f"d{k % 3}" / f"IM{k}"
        target.parent.mkdir(parents=True, exist_ok=True)
        moved.append(p.rename(target))
    data, affine, rep = read_series(tmp_path / "tree", files=moved)
    np.testing.assert_array_equal(data, s.expected_data())
    np.testing.assert_allclose(affine, s.ras_affine(), atol=1e-6)


def test_the_pipeline_refuses_a_mixed_series_folder(tmp_path):
    a, b = _interleaved(tmp_path / "train_images" / "1" / "2")
    with pytest.raises(StudyError) as info:
        run_study(StudyInput("1", StudySource("dicom_folder", tmp_path / "train_images" / "1" / "2"), series_id="2"),
                  load_segmenter("reference"), tmp_path / "results")
    err = info.value
    assert err.error_class == "input.mixed_series"
    assert err.message.startswith("study 1: ") and a.series_uid in err.message and b.series_uid in err.message
    assert not list((tmp_path / "results").glob("nifti/*")), "nothing published"
