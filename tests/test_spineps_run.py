"""`batchseg run` with the real SPINEPS (random-weight models) over synthetic DICOM studies."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("spineps")

from batchseg.ledger import Ledger  # noqa: E402
from batchseg.synth import read_manifest, synth_dataset  # noqa: E402
from tests.conftest import batchseg, status_json  # noqa: E402
from tests.spineps_models import build_random_models  # noqa: E402

pytestmark = pytest.mark.spineps


@pytest.fixture(scope="module")
def spineps_project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("spineps-run")
    models = build_random_models(root / "models")
    data = root / "data"
    synth_dataset(data, 3, seed=11, matrix=128, broken=False)
    manifest = read_manifest(data)
    # One study whose T2 series holds no anatomy at all: SPINEPS itself finds nothing.
    blank = sorted(manifest["studies"])[1]
    series = data / "train_images" / blank / str(manifest["studies"][blank]["series"]["Sagittal T2/STIR"])
    for path in series.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PixelData = np.full_like(ds.pixel_array, 200).tobytes()
        ds.save_as(path)
    project = root / "p"
    batchseg("init", "--project", str(project), "--dataset", str(data), "--segmenter", "spineps",
             "--models", str(models))
    run = batchseg("run", "--project", str(project), "--workers", "1", check=False,
                   env={"SPINEPS_NO_CITATION_REMINDER": "1"})
    assert run.returncode == 1, run.stdout + run.stderr
    return project, manifest, blank


def test_every_output_under_our_names(spineps_project: tuple[Path, dict, str]) -> None:
    project, manifest, blank = spineps_project
    status = status_json(project)
    assert status["states"]["done"] == 2
    out = project / "results"
    for study in manifest["studies"]:
        if study == blank:
            continue
        for name in (f"nifti/{study}_T2w.nii.gz", f"segmentations/{study}_seg-vert_msk.nii.gz",
                     f"segmentations/{study}_seg-spine_msk.nii.gz", f"segmentations/{study}_ctd.json",
                     f"centroids/{study}_centroids.json", f"centroids/{study}_vertebra_labels.json",
                     f"metadata/{study}_metadata.json", f"qc/{study}_qc.png"):
            assert (out / name).is_file(), name
        ctd = json.loads((out / f"segmentations/{study}_ctd.json").read_text())
        assert isinstance(ctd, list) and len(ctd) == 2, "SPINEPS's own centroid file, as it wrote it"


def test_one_pipeline_for_every_study_of_the_worker(spineps_project: tuple[Path, dict, str]) -> None:
    project, manifest, blank = spineps_project
    infos = [json.loads((project / "results" / "metadata" / f"{s}_metadata.json").read_text())["segmenter"]
             for s in manifest["studies"] if s != blank]
    assert len({info["pipeline_instance"] for info in infos}) == 1
    assert sorted(info["studies_on_pipeline"] for info in infos)[-1] >= 2
    for info in infos:
        assert info["name"] == "spineps" and info["labels_anatomical"] is True
        assert set(info["models"]) == {"semantic", "instance", "labeling"}


def test_a_failure_inside_spineps_fails_only_that_study(spineps_project: tuple[Path, dict, str]) -> None:
    project, _, blank = spineps_project
    status = status_json(project)
    assert status["states"]["failed"] == 1
    group = status["failures"][0]
    assert group["studies"] == [blank] and group["error_class"] == "segment.empty"
    assert blank in group["example"]


def test_without_weights_nothing_is_claimed(tmp_path: Path, synth_small: Path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    check = batchseg("models", "check", "--models", str(empty), check=False)
    assert check.returncode == 1
    lines = check.stderr.strip().splitlines()
    assert len(lines) == 1 and "batchseg models download" in lines[0] and "T2w_semantic" in lines[0]
    project = tmp_path / "p"
    batchseg("init", "--project", str(project), "--dataset", str(synth_small), "--segmenter", "spineps",
             "--models", str(empty))
    run = batchseg("run", "--project", str(project), check=False)
    assert run.returncode != 0 and "missing SPINEPS weights" in run.stderr
    work = batchseg("work", "--project", str(project), check=False)
    assert work.returncode == 3
    ledger = Ledger(f"sqlite:///{project / 'ledger.sqlite'}")
    assert not [e for e in ledger.history() if e["event"] == "claimed"]
    ledger.close()


def test_spineps_snapshot_is_kept_and_body_centroids_are_its_ctd(spineps_project: tuple[Path, dict, str]) -> None:
    project, manifest, blank = spineps_project
    out = project / "results"
    for study in manifest["studies"]:
        if study == blank:
            continue
        snapshot = out / "qc" / f"{study}_spineps.png"
        assert snapshot.is_file() and snapshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        metadata = json.loads((out / "metadata" / f"{study}_metadata.json").read_text())
        assert metadata["outputs"]["qc_segmenter"] == snapshot.name and "qc_segmenter" in metadata["checksums"]
        centroids = json.loads((out / "centroids" / f"{study}_centroids.json").read_text())
        _, ctd = json.loads((out / "segmentations" / f"{study}_ctd.json").read_text())
        by_label = {v["instance_id"]: v for k, v in centroids.items() if k != "definitions"}
        assert ctd, "SPINEPS found vertebrae"
        for label, points in ctd.items():
            entry = by_label[int(label)]
            # SPINEPS's point is the body centroid; for the sacrum (no body class) its whole-label centroid.
            ours = entry["centroid_voxel"] if int(label) == 26 else entry["body_centroid_voxel"]
            assert np.max(np.abs(np.subtract(ours, points["50"]))) <= 1.0, (study, label)
        assert "lstv" in metadata and metadata["lstv"]["pattern"]


def test_worker_logs_hold_no_terminal_colour_codes(spineps_project: tuple[Path, dict, str]) -> None:
    """SPINEPS (TPTBox's logger) prints ANSI colours; a worker's log file must not keep them."""
    project, _, _ = spineps_project
    logs = "".join(p.read_text(errors="replace") for p in (project / "logs").glob("local-*.log"))
    assert "[SPINEPS] Processing" in logs, "SPINEPS's own log lines are in the worker log"
    assert "\x1b" not in logs, "terminal escape codes in the worker log"
