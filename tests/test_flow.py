"""The whole flow on one machine: init, run, status, retry-failed, the demo."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from batchseg.synth import read_manifest
from tests.conftest import batchseg, set_config, status_json
from tests.helpers import assert_no_overlapping_claims


@pytest.fixture(scope="module")
def finished(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project over the small synthetic dataset, run to the end with the reference segmenter."""
    project = tmp_path_factory.mktemp("project")
    batchseg("init", "--project", str(project), "--dataset", str(synth_small),
             "--studies", str(synth_small / "study_ids.txt"), "--segmenter", "reference")
    result = batchseg("run", "--project", str(project), "--workers", "2", check=False)
    assert result.returncode == 1, "a broken study failed, so run must say so"
    assert "outputs in" in result.stdout
    return project


def test_good_studies_done_and_broken_ones_under_distinct_classes(finished: Path, synth_small: Path) -> None:
    manifest = read_manifest(synth_small)
    status = status_json(finished)
    good = [s for s, info in manifest["studies"].items() if not info["broken"]]
    broken = {info["broken"]: s for s, info in manifest["studies"].items() if info["broken"]}
    assert status["states"]["done"] == len(good)
    assert status["states"]["running"] == 0 and status["states"]["pending"] == 0
    classes = {g["error_class"]: g["studies"] for g in status["failures"] + status["skipped"]}
    assert classes["input.no_series"] == [broken["no_t2"]]
    assert classes["input.bad_dicom"] == [broken["truncated"]]
    assert classes["input.missing"] == [broken["missing_folder"]]
    failure = next(g for g in status["failures"] if g["error_class"] == "input.bad_dicom")
    assert broken["truncated"] in failure["example"] and "\n" not in failure["example"]
    assert Path(failure["log"]).is_file()


def test_outputs_of_a_done_study(finished: Path, synth_small: Path) -> None:
    manifest = read_manifest(synth_small)
    study = next(s for s, info in manifest["studies"].items() if not info["broken"])
    out = finished / "results"
    names = [f"nifti/{study}_T2w.nii.gz", f"segmentations/{study}_seg-vert_msk.nii.gz",
             f"segmentations/{study}_seg-spine_msk.nii.gz", f"segmentations/{study}_ctd.json",
             f"centroids/{study}_centroids.json", f"centroids/{study}_vertebra_labels.json",
             f"metadata/{study}_metadata.json", f"qc/{study}_qc.png"]
    for name in names:
        assert (out / name).is_file(), name
    metadata = json.loads((out / f"metadata/{study}_metadata.json").read_text())
    assert "synthetic phantoms only" in json.dumps(metadata["segmenter"])
    assert set(metadata["timings"]) >= {"convert", "segment", "measure", "qc", "total"}
    import hashlib

    digest = hashlib.sha256((out / f"nifti/{study}_T2w.nii.gz").read_bytes()).hexdigest()
    assert metadata["checksums"]["nifti"] == digest
    assert not any((out / ".staging").iterdir()) if (out / ".staging").exists() else True


def test_centroids_match_the_phantom_ground_truth(finished: Path, synth_small: Path) -> None:
    manifest = read_manifest(synth_small)
    checked = 0
    for study, info in manifest["studies"].items():
        if info["broken"]:
            continue
        truth = nib.load(synth_small / "ground_truth" / f"{study}_seg-vert_msk.nii.gz")
        labels = np.asarray(truth.dataobj).astype(int)
        spacing = np.abs(np.linalg.eigvalsh(truth.affine[:3, :3] @ truth.affine[:3, :3].T)) ** 0.5
        found = json.loads((finished / "results" / "centroids" / f"{study}_centroids.json").read_text())
        by_label = {entry["instance_id"]: entry for key, entry in found.items() if key != "definitions"}
        expected = sorted(int(v) for v in np.unique(labels) if v)
        assert sorted(by_label) == expected, f"study {study} ({info['variant']})"
        for label in expected:
            voxels = np.argwhere(labels == label).mean(axis=0)
            world = truth.affine @ np.append(voxels, 1.0)
            error = np.abs(np.array(by_label[label]["centroid_world"]) - world[:3])
            assert np.all(error <= spacing.max()), f"study {study} label {label} off by {error}"
        metadata = json.loads((finished / "results" / "metadata" / f"{study}_metadata.json").read_text())
        lstv = metadata["lstv"]
        assert lstv["l6_present"] == (info["variant"] == "L6")
        assert lstv["t13_present"] == (info["variant"] == "T13")
        assert {k: lstv[k] for k in ("pattern", "count_assessable", "lumbar_count")} == info["expected_lstv"]
        checked += 1
    assert checked >= 4


def test_status_for_people_and_for_one_study(finished: Path, synth_small: Path) -> None:
    text = batchseg("status", "--project", str(finished), "--failed").stdout
    assert "input.bad_dicom" in text and "done" in text
    manifest = read_manifest(synth_small)
    study = next(s for s, info in manifest["studies"].items() if info["broken"] == "truncated")
    detail = batchseg("status", "--project", str(finished), "--study", study).stdout
    assert "claimed" in detail and "input.bad_dicom" in detail and "lstv:" not in detail
    done = next(s for s, info in manifest["studies"].items() if not info["broken"] and info["variant"] == "L6")
    detail = batchseg("status", "--project", str(finished), "--study", done).stdout
    assert "lstv:\n  pattern: lumbarization\n  count_assessable: True\n  lumbar_count: 6" in detail
    assert "  candidates:\n    - lumbarization: L6 (label 25) present" in detail
    assert "  sequence: T10 | T10/T11 | T11" in detail
    data = json.loads(batchseg("status", "--project", str(finished), "--study", done, "--json").stdout)
    assert data["lstv"]["pattern"] == "lumbarization" and data["lstv"]["lumbar_count"] == 6
    batchseg("report", "--project", str(finished), "--csv", str(finished / "studies.csv"))
    assert (finished / "studies.csv").read_text().splitlines()[0].startswith("study_id,")


def test_init_again_keeps_every_state(finished: Path, synth_small: Path) -> None:
    before = status_json(finished)
    out = batchseg("init", "--project", str(finished), "--dataset", str(synth_small),
                   "--studies", str(synth_small / "study_ids.txt")).stdout
    assert "0 added" in out
    after = status_json(finished)
    assert after["states"] == before["states"]


def test_retry_failed_resets_and_keeps_history(finished: Path, synth_small: Path, tmp_path: Path) -> None:
    # Work on a copy so the module's other tests keep their project.
    import shutil

    project = tmp_path / "copy"
    shutil.copytree(finished, project)
    set_config(project, out=str(finished / "results"))
    out = batchseg("retry-failed", "--project", str(project), "--error-class", "input.bad_dicom").stdout
    assert "reset" in out and "1 studies back to pending" in out
    status = status_json(project)
    assert status["states"]["pending"] == 1
    study = next(iter(status["failures"]), None)
    assert study is None or study["error_class"] != "input.bad_dicom"


def test_run_on_nothing_pending_exits_zero(finished: Path) -> None:
    assert batchseg("run", "--project", str(finished)).returncode == 0


def test_many_workers_many_studies_every_study_done_once(tmp_path: Path) -> None:
    """8 workers over 200 studies with the no-op segmenter: each study done exactly once."""
    from batchseg.ledger import Ledger
    from batchseg.synth import synth_dataset

    data = tmp_path / "data"
    synth_dataset(data, 200, seed=3, matrix=64, broken=False)
    project = tmp_path / "p"
    batchseg("init", "--project", str(project), "--dataset", str(data), "--segmenter", "noop")
    batchseg("run", "--project", str(project), "--workers", "8")
    status = status_json(project)
    assert status["states"]["done"] == 200 and status["total"] == 200
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    events = ledger.history()
    done = [e["study_id"] for e in events if e["event"] == "done"]
    assert len(done) == 200 and len(set(done)) == 200
    assert len({e["pid"] for e in events if e["event"] == "claimed"}) > 1, "work was shared between processes"
    assert_no_overlapping_claims(events)
    ledger.close()
