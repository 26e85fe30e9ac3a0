"""Bad input never crashes the batch: each kind gets its own error class and a one-line message.

The kinds tested here: a truncated DICOM file, an empty series folder, a missing slice, a non-DICOM file inside a
series (ignored, the study still converts), an unsafe study id, a listed study with no folder, a study with no
Sagittal T2/STIR series, a missing CSV column and a malformed study list.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from batchseg.synth import read_manifest
from tests.conftest import batchseg, status_json


def series_dir(data: Path, study: str) -> Path:
    manifest = read_manifest(data)["studies"][study]
    return data / "train_images" / study / str(manifest["series"]["Sagittal T2/STIR"])


@pytest.fixture(scope="module")
def damaged(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    data = tmp_path_factory.mktemp("damaged") / "data"
    shutil.copytree(synth_small, data)
    good = [s for s, info in read_manifest(data)["studies"].items() if not info["broken"]]
    kinds = dict(zip(["empty_folder", "missing_slice", "extra_file"], good))
    for path in series_dir(data, kinds["empty_folder"]).iterdir():
        path.unlink()
    slices = sorted(series_dir(data, kinds["missing_slice"]).glob("*.dcm"), key=lambda p: int(p.stem))
    slices[len(slices) // 2].unlink()
    (series_dir(data, kinds["extra_file"]) / "README.txt").write_text("notes from the scanner operator\n")
    study_list = data / "study_ids.txt"
    study_list.write_text(study_list.read_text() + "../../etc/passwd\n12ab\n")
    project = tmp_path_factory.mktemp("p")
    init = batchseg("init", "--project", str(project), "--dataset", str(data), "--studies", str(study_list),
                    "--segmenter", "reference")
    assert "input.bad_id" in init.stdout
    run = batchseg("run", "--project", str(project), "--workers", "2", check=False)
    assert run.returncode == 1
    return data, project, kinds


def classes_by_study(project: Path) -> dict[str, tuple[str, str]]:
    status = status_json(project)
    return {study: (group["error_class"], group["example"])
            for group in status["failures"] + status["skipped"] for study in group["studies"]}


def test_each_bad_input_has_its_own_class_and_one_line(damaged: tuple[Path, Path, dict[str, str]]) -> None:
    data, project, kinds = damaged
    found = classes_by_study(project)
    broken = {info["broken"]: s for s, info in read_manifest(data)["studies"].items() if info["broken"]}
    expected = {
        kinds["empty_folder"]: "input.missing",
        kinds["missing_slice"]: "input.geometry",
        broken["truncated"]: "input.bad_dicom",
        broken["missing_folder"]: "input.missing",
        broken["no_t2"]: "input.no_series",
    }
    for study, error_class in expected.items():
        assert found[study][0] == error_class, (study, found.get(study))
    for error_class, message in found.values():
        assert "\n" not in message and message
    per_study = batchseg("status", "--project", str(project), "--study", broken["truncated"]).stdout
    assert ".dcm" in per_study, "the message names the bad file"
    bad_ids = [m for c, m in found.values() if c == "input.bad_id"]
    assert len(bad_ids) == 2 and any("passwd" in m for m in bad_ids)


def test_the_batch_went_on(damaged: tuple[Path, Path, dict[str, str]]) -> None:
    data, project, kinds = damaged
    status = status_json(project)
    assert status["states"]["done"] >= 2 and status["states"]["pending"] == 0 and status["states"]["running"] == 0


def test_a_stray_file_in_a_series_is_ignored_and_recorded(damaged: tuple[Path, Path, dict[str, str]]) -> None:
    _, project, kinds = damaged
    study = kinds["extra_file"]
    metadata = json.loads((project / "results" / "metadata" / f"{study}_metadata.json").read_text())
    assert "README.txt" in json.dumps(metadata["input"]["conversion"])


def test_missing_csv_column_stops_init_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "train_series_descriptions.csv").write_text("study_id,series\n1,2\n")
    result = batchseg("init", "--project", str(tmp_path / "p"), "--dataset", str(data), check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "dataset.csv" in result.stderr and "series_id" in result.stderr


def test_malformed_study_list_stops_init_with_one_line(synth_small: Path, tmp_path: Path) -> None:
    bad = tmp_path / "ids.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    result = batchseg("init", "--project", str(tmp_path / "p"), "--dataset", str(synth_small),
                      "--studies", str(bad), check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "dataset.study_list" in result.stderr
    assert not (tmp_path / "p" / "ledger.sqlite").exists(), "nothing is written when init refuses"
