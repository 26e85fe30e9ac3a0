"""Every dataset layout end to end: the same phantoms give the same label maps and centroids as their RSNA form."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from batchseg.synth import read_manifest
from batchseg.synth_layouts import write_layout
from tests.conftest import batchseg, status_json

# What each broken study becomes in each layout (the RSNA form: test_flow.py).
BROKEN = {
    "rsna": {"no_t2": "input.no_series", "truncated": "input.bad_dicom", "missing_folder": "input.missing"},
    "bids": {"no_t2": "input.no_series", "truncated": "input.bad_nifti", "missing_folder": "input.no_series"},
    "manifest": {"no_t2": "input.no_series", "truncated": "input.bad_dicom", "missing_folder": "input.missing"},
    "dicom": {"no_t2": "input.no_series", "truncated": "input.bad_dicom", "missing_folder": "input.no_series"},
}


def run_project(project: Path, dataset: Path, study_list: Path, *extra: str) -> str:
    """init (layout detected), run with the reference segmenter, then status and report; init's output."""
    init = batchseg("init", "--project", str(project), "--dataset", str(dataset), "--studies", str(study_list),
                    "--segmenter", "reference", *extra).stdout
    result = batchseg("run", "--project", str(project), "--workers", "2", check=False)
    assert result.returncode == 1, "the broken studies failed, so run says so"
    batchseg("report", "--project", str(project), "--csv", str(project / "studies.csv"))
    return init


@pytest.fixture(scope="module")
def rsna_run(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("rsna") / "p"
    run_project(project, synth_small, synth_small / "study_ids.txt")
    return project


@pytest.fixture(scope="module", params=["bids", "manifest", "dicom"])
def layout_run(request: pytest.FixtureRequest, synth_small: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path, str]:
    layout = request.param
    made = write_layout(synth_small, tmp_path_factory.mktemp(layout) / "data", layout)
    project = made.root.parent / "p"
    init = run_project(project, made.dataset, made.study_list)
    return layout, made.root, project, init


def test_the_layout_is_detected_and_said(layout_run: tuple[str, Path, Path, str]) -> None:
    layout, _, project, init = layout_run
    assert init.splitlines()[0].startswith(f"layout {layout} (detected: ")
    assert f'layout = "{layout}"' in (project / "batchseg.toml").read_text()


def test_label_maps_and_centroids_equal_the_rsna_form(layout_run: tuple[str, Path, Path, str],
                                                      rsna_run: Path) -> None:
    layout, data, project, _ = layout_run
    studies = read_manifest(data)["studies"]
    compared = 0
    for study, info in studies.items():
        if info["broken"]:
            continue
        rsna = info["rsna_study_id"]
        for folder, suffix in (("segmentations", "_seg-vert_msk.nii.gz"), ("segmentations", "_seg-spine_msk.nii.gz"),
                               ("nifti", "_T2w.nii.gz")):
            mine = (project / "results" / folder / f"{study}{suffix}").read_bytes()
            theirs = (rsna_run / "results" / folder / f"{rsna}{suffix}").read_bytes()
            assert mine == theirs, f"{layout} study {study}: {folder}/{suffix} differs from RSNA study {rsna}"
        mine = json.loads((project / "results" / "centroids" / f"{study}_centroids.json").read_text())
        theirs = json.loads((rsna_run / "results" / "centroids" / f"{rsna}_centroids.json").read_text())
        assert mine == theirs and mine, f"{layout} study {study}: centroids differ"
        compared += 1
    assert compared == 5


def test_status_and_report_of_every_study(layout_run: tuple[str, Path, Path, str]) -> None:
    layout, data, project, _ = layout_run
    studies = read_manifest(data)["studies"]
    status = status_json(project)
    good = [s for s, info in studies.items() if not info["broken"]]
    assert status["states"]["done"] == len(good) and status["total"] == len(studies)
    classes = {study: group["error_class"] for group in status["failures"] + status["skipped"]
               for study in group["studies"]}
    for study, info in studies.items():
        if info["broken"]:
            assert classes[study] == BROKEN[layout][info["broken"]], f"{layout} {info['broken']} study {study}"
    with open(project / "studies.csv", newline="") as handle:
        rows = {row["study_id"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(studies)
    assert all(rows[s]["state"] == "done" for s in good)
    detail = batchseg("status", "--project", str(project), "--study", good[0]).stdout
    assert "selection_reason" in detail and "done" in detail


def test_metadata_says_where_the_input_came_from(layout_run: tuple[str, Path, Path, str]) -> None:
    layout, data, project, _ = layout_run
    kinds = set()
    for study, info in read_manifest(data)["studies"].items():
        if info["broken"]:
            continue
        metadata = json.loads((project / "results" / "metadata" / f"{study}_metadata.json").read_text())
        kinds.add(metadata["input"]["kind"])
        assert Path(metadata["input"]["path"]).exists()
        assert metadata["levels"]["verdict"] == "not_available" and layout in metadata["levels"]["reason"]
    assert kinds == {"bids": {"nifti"}, "manifest": {"nifti", "dicom_folder", "dicom_files"},
                     "dicom": {"dicom_files"}}[layout]


def test_nifti_inputs_linked_with_link(synth_small: Path, tmp_path: Path) -> None:
    made = write_layout(synth_small, tmp_path / "data", "bids")
    project = tmp_path / "p"
    batchseg("init", "--project", str(project), "--dataset", str(made.dataset), "--segmenter", "noop", "--link",
             "--limit", "1")
    batchseg("run", "--project", str(project))
    [nifti] = (project / "results" / "nifti").iterdir()
    target = nifti.resolve()
    assert nifti.is_symlink() and target.is_relative_to(made.root.resolve()) and target.name == nifti.name
    metadata = json.loads(next((project / "results" / "metadata").iterdir()).read_text())
    assert metadata["input"]["conversion"]["placed"] == "linked"


def test_a_moved_bids_dataset_is_found_through_the_config(synth_small: Path, tmp_path: Path) -> None:
    from tests.conftest import set_config

    made = write_layout(synth_small, tmp_path / "data", "bids")
    project = tmp_path / "p"
    batchseg("init", "--project", str(project), "--dataset", str(made.dataset), "--segmenter", "noop",
             "--limit", "2")
    moved = tmp_path / "elsewhere"
    made.root.rename(moved)
    set_config(project, dataset=str(moved))
    batchseg("run", "--project", str(project))
    assert status_json(project)["states"]["done"] == 2


def test_an_explicit_layout_wins_and_a_wrong_one_is_one_line(synth_small: Path, tmp_path: Path) -> None:
    result = batchseg("init", "--project", str(tmp_path / "p"), "--dataset", str(synth_small), "--layout", "bids",
                      check=False)
    assert result.returncode == 2 and "dataset.layout" in result.stderr and "sub-*" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = batchseg("init", "--project", str(tmp_path / "q"), "--dataset", str(tmp_path / "nothing"), check=False)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def test_a_crafted_ledger_row_fails_as_bad_id_and_reaches_no_path(synth_small: Path, tmp_path: Path) -> None:
    import sqlite3

    made = write_layout(synth_small, tmp_path / "data", "bids")
    project = tmp_path / "p"
    batchseg("init", "--project", str(project), "--dataset", str(made.dataset), "--segmenter", "noop",
             "--limit", "2")
    with sqlite3.connect(project / "ledger.sqlite") as db:
        [first, second] = [r[0] for r in db.execute("SELECT study_id FROM studies ORDER BY seq")]
        db.execute("UPDATE studies SET series_id = '../../../outside_T2w.nii.gz' WHERE study_id = ?", (first,))
        db.execute("UPDATE studies SET study_id = '../x' WHERE study_id = ?", (second,))
    (tmp_path / "outside_T2w.nii.gz").write_bytes(b"not to be read")
    result = batchseg("run", "--project", str(project), check=False)
    assert result.returncode == 1
    failures = {g["error_class"]: g for g in status_json(project)["failures"]}
    assert set(failures) == {"input.bad_id"} and failures["input.bad_id"]["count"] == 2
    assert not (project / "results" / "nifti").exists() or not any((project / "results" / "nifti").iterdir())


@pytest.mark.parametrize("layout", ["bids", "manifest", "dicom"])
def test_the_synth_command_writes_each_layout(tmp_path: Path, layout: str) -> None:
    out = batchseg("synth", str(tmp_path / "d"), "--layout", layout, "--studies", "2", "--matrix", "64",
                   "--no-broken").stdout
    dataset = tmp_path / "d" / ("manifest.csv" if layout == "manifest" else "")
    assert f"({layout} layout)" in out and f"batchseg init --dataset {dataset}".rstrip("/") in out
    studies = (tmp_path / "d" / "study_ids.txt").read_text().split()
    assert len(studies) == 2 and set(read_manifest(tmp_path / "d")["studies"]) == set(studies)
    assert not list(tmp_path.glob(".d-rsna-*")), "the RSNA form it was written from is gone"
