"""The `bids` layout: study ids from sub-/ses- folders, the sagittal T2w with the most slices, the reason."""
from __future__ import annotations

from pathlib import Path

from batchseg.bids import build_inventory, is_bids_id
from batchseg.inventory import detect_layout
from tests.test_nifti_input import AXIAL, volume, write


def anat(root: Path, study: str) -> Path:
    subject, _, session = study.partition("_ses-")
    folder = root / subject / (f"ses-{session}" if session else "") / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_several_t2w_runs_the_sagittal_one_with_most_slices(tmp_path: Path) -> None:
    folder = anat(tmp_path, "sub-01")
    write(folder / "sub-01_T2w.nii.gz", volume((15, 40, 32)))
    write(folder / "sub-01_acq-sag_run-2_T2w.nii.gz", volume((18, 40, 32)))
    write(folder / "sub-01_acq-ax_T2w.nii.gz", volume((40, 32, 30)), AXIAL)
    write(folder / "sub-01_T1w.nii.gz", volume((25, 40, 32)))
    [row] = build_inventory(tmp_path).rows
    assert row.study_id == "sub-01" and row.series_id == "sub-01_acq-sag_run-2_T2w.nii.gz"
    assert Path(row.input_path) == (folder / row.series_id).resolve()
    reason = row.selection_reason
    assert reason.startswith("3 T2w images") and "sub-01_acq-ax_T2w.nii.gz (axial, 30 slices" in reason
    assert "chose sub-01_acq-sag_run-2_T2w.nii.gz, sagittal with the most slices" in reason


def test_sessions_study_ids_and_what_is_skipped(tmp_path: Path) -> None:
    write(anat(tmp_path, "sub-02_ses-A") / "sub-02_ses-A_T2w.nii", volume())
    write(anat(tmp_path, "sub-02_ses-B") / "sub-02_ses-B_T2w.nii.gz", volume())
    write(anat(tmp_path, "sub-03") / "sub-04_T2w.nii.gz", volume())               # another subject's name
    write(anat(tmp_path, "sub-05") / "sub-05_T2w.nii.gz", volume((40, 32, 30)), AXIAL)
    (anat(tmp_path, "sub-06") / "sub-06_T2w.nii.gz").write_bytes(b"garbage" * 50)
    write(anat(tmp_path, "sub-a_b") / "sub-a_b_T2w.nii.gz", volume())              # not an alphanumeric label
    inventory = build_inventory(tmp_path, study_list=["sub-02_ses-A", "sub-02_ses-B", "sub-03", "sub-05", "sub-06",
                                                      "sub-99", "sub-a_b", "../sub-02"])
    rows = {r.study_id: r for r in inventory.rows}
    assert not rows["sub-02_ses-A"].skip_class and rows["sub-02_ses-A"].series_id == "sub-02_ses-A_T2w.nii"
    assert not rows["sub-02_ses-B"].skip_class
    assert rows["sub-03"].skip_class == "input.no_series" and "sub-04_T2w.nii.gz" in rows["sub-03"].skip_message
    assert rows["sub-05"].skip_class == "input.no_series" and "axial" in rows["sub-05"].skip_message
    assert rows["sub-06"].skip_class == "input.bad_nifti"
    assert rows["sub-99"].skip_class == "input.no_series" and "no sub-/ses- folder" in rows["sub-99"].skip_message
    assert rows["sub-a_b"].skip_class == "input.bad_id"
    assert rows["../sub-02"].skip_class == "input.bad_id" and rows["../sub-02"].input_path is None
    assert [r.study_id for r in build_inventory(tmp_path, limit=2).rows] == ["sub-02_ses-A", "sub-02_ses-B"]


def test_bids_ids_and_detection(tmp_path: Path) -> None:
    assert is_bids_id("sub-01") and is_bids_id("sub-ABC12_ses-2")
    for bad in ("sub-01_run-1", "sub-0.1", "sub-", "sub-01_ses-", "01", "sub-01/ses-1", "sub-a-b"):
        assert not is_bids_id(bad), bad
    write(anat(tmp_path, "sub-01") / "sub-01_T2w.nii.gz", volume())
    assert detect_layout(tmp_path).layout == "bids"
