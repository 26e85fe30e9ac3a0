"""The `manifest` layout: a CSV of study ids and paths (DICOM folders, NIfTI files, one series of a mixed folder)."""
from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from batchseg.dataset import DatasetError
from batchseg.manifest import build_inventory
from tests.conftest import batchseg
from tests.dicom_factory import AXIAL, make_volume, write_series
from tests.test_nifti_input import volume, write


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_series(root / "series" / "a", make_volume(6, 16, 16))
    write(root / "b_T2w.nii.gz", volume())
    mixed = root / "mixed"
    write_series(mixed, make_volume(6, 16, 16), name_prefix="sag_")
    write_series(mixed, make_volume(5, 16, 16), orientation=AXIAL, name_prefix="ax_")
    return root


def uid_of(folder: Path, prefix: str) -> str:
    return str(pydicom.dcmread(next(folder.glob(f"{prefix}*"))).SeriesInstanceUID)


def test_paths_relative_to_the_csv_and_a_series_of_a_mixed_folder(data: Path, tmp_path: Path) -> None:
    sag = uid_of(data / "mixed", "sag_")
    (data / "lists").mkdir()
    csv = data / "lists" / "cohort.csv"
    csv.write_text("study_id,path,series_id\n"
                   "P-001,../series/a,\n"
                   f"P-002,{data / 'b_T2w.nii.gz'},\n"
                   f"P-003,../mixed,{sag}\n"
                   "P-004,../mixed,1.2.3.999\n")
    rows = {r.study_id: r for r in build_inventory(csv, tmp_path / "p").rows}
    assert rows["P-001"].input_path == str(data / "series" / "a") and not rows["P-001"].series_id
    assert rows["P-002"].input_path == str(data / "b_T2w.nii.gz") and rows["P-002"].series_description == "NIfTI"
    listing = json.loads(Path(rows["P-003"].input_path).read_text())
    assert rows["P-003"].series_id == sag and sorted(listing["files"]) == [f"sag_{i}.dcm" for i in range(1, 7)]
    assert "sagittal T2" in rows["P-003"].selection_reason and "cohort.csv line 4" in rows["P-003"].selection_reason
    assert rows["P-004"].skip_class == "input.no_series"
    assert sag in rows["P-004"].skip_message and uid_of(data / "mixed", "ax_") in rows["P-004"].skip_message


def test_duplicates_are_read_once_and_conflicts_skipped(data: Path, tmp_path: Path) -> None:
    csv = data / "m.csv"
    csv.write_bytes(b"\xef\xbb\xbfstudy_id,path\r\n"                      # Excel's byte order mark
                    b"A1,series/a\r\nA1,series/a\r\nA1, series/a \r\n"
                    b"B2,b_T2w.nii.gz\r\nB2,series/a\r\n"
                    b",series/a\r\n../x,series/a\r\n")
    inventory = build_inventory(csv, tmp_path / "p")
    rows = {r.study_id: r for r in inventory.rows}
    assert inventory.duplicates == 2 and not rows["A1"].skip_class
    assert rows["B2"].skip_class == "input.no_series" and "lines 5, 6" in rows["B2"].skip_message
    assert rows["../x"].skip_class == "input.bad_id"
    assert len(inventory.warnings) == 1 and "line 7" in inventory.warnings[0]


def test_init_and_run_a_manifest(data: Path, tmp_path: Path) -> None:
    csv = data / "m.csv"
    csv.write_text(f"study_id,path,series_id\nA1,series/a,\nA1,series/a,\nC3,mixed,{uid_of(data / 'mixed', 'sag_')}\n")
    project = tmp_path / "p"
    out = batchseg("init", "--project", str(project), "--dataset", str(csv), "--segmenter", "noop").stdout
    assert "layout manifest (detected: a file" in out
    assert "2 studies listed, 2 with an input, 0 skipped, 1 duplicate row(s) read once" in out
    batchseg("run", "--project", str(project))
    for study, slices in (("A1", 6), ("C3", 6)):
        metadata = json.loads((project / "results" / "metadata" / f"{study}_metadata.json").read_text())
        assert len(metadata["input"]["conversion"]["slices_used"]) == slices


def test_a_manifest_without_its_columns_or_a_folder_for_a_csv(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,file\n1,a\n")
    with pytest.raises(DatasetError, match="missing column"):
        build_inventory(tmp_path / "m.csv", tmp_path / "p")
    result = batchseg("init", "--project", str(tmp_path / "p"), "--dataset", str(tmp_path), "--layout", "manifest",
                      check=False)
    assert result.returncode == 2 and "a manifest is a CSV file" in result.stderr
