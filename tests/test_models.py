"""Checking SPINEPS weights on disk: folders only, never SPINEPS, never the network.

These run without the spineps extra. The model folders here hold SPINEPS's file layout
(inference_config.json plus the weight files it looks for) because that layout is all
`check_models` reads; test_spineps.py checks the same function on folders SPINEPS really loads.
"""
from __future__ import annotations

import json
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from batchseg.models import MODEL_RELEASES, SpinepsMissing, check_models, download_models, import_spineps

NAMES = [r.folder for r in MODEL_RELEASES.values()]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _config(folder: Path, modeltype: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inference_config.json").write_text(json.dumps({"log_name": folder.name, "modeltype": modeltype}))


def _layout(models: Path) -> Path:
    semantic = models / "T2w_semantic_v1.0.9"
    _config(semantic, "nnunet")
    (semantic / "plans.json").write_text("{}")
    (semantic / "dataset.json").write_text("{}")
    (semantic / "fold_0").mkdir()
    (semantic / "fold_0" / "checkpoint_final.pth").write_bytes(b"weights")
    instance = models / "instance_sagittal_v1.2.0"
    _config(instance, "unet")
    (instance / "instance-weights.ckpt").write_bytes(b"weights")
    labeling = models / "T2w_labeling_v1.4.0"
    _config(labeling, "classifier")
    (labeling / "epoch=9-val_f1=0.9-valf1-weights.ckpt").write_bytes(b"weights")
    return models


def test_empty_folder_names_all_three_and_the_fix(tmp_path):
    check = check_models(tmp_path, "t2w", "instance", "t2w_labeling")
    assert not check.ok
    assert check.missing == NAMES
    assert check.found == {}
    assert "\n" not in check.message
    assert check.message.startswith(f"missing SPINEPS weights in {tmp_path}: " + ", ".join(NAMES))
    assert f"`batchseg models download --to {tmp_path}`" in check.message


def test_complete_folder_is_ok(tmp_path):
    models = _layout(tmp_path / "m")
    check = check_models(models)
    assert check.ok, check.message
    assert check.missing == []
    assert check.found == {"semantic": models / NAMES[0], "instance": models / NAMES[1], "labeling": models / NAMES[2]}


def test_labeling_off_needs_two(tmp_path):
    models = _layout(tmp_path / "m")
    for path in sorted((models / NAMES[2]).rglob("*"), reverse=True):
        path.unlink()
    assert not check_models(models, labeling="t2w_labeling").ok
    for off in (None, "", "none"):
        check = check_models(models, labeling=off)
        assert check.ok and "labeling" not in check.found


def test_missing_weight_files_are_reported(tmp_path):
    models = _layout(tmp_path / "m")
    (models / NAMES[0] / "fold_0" / "checkpoint_final.pth").unlink()
    (models / NAMES[1] / "instance-weights.ckpt").unlink()
    check = check_models(models)
    assert not check.ok
    assert check.missing == NAMES[:2]
    assert "checkpoint_final.pth" in check.message and "weights*.ckpt" in check.message


def test_wrong_kind_of_model_is_refused(tmp_path):
    models = _layout(tmp_path / "m")
    check = check_models(models, semantic=str(models / NAMES[2]))
    assert not check.ok
    assert "classifier" in check.message and "semantic" in check.message
    assert not check_models(models, semantic="instance").ok


def test_folder_paths_are_checked_too(tmp_path):
    models = _layout(tmp_path / "m")
    elsewhere = tmp_path / "other" / "my_semantic"
    elsewhere.parent.mkdir(parents=True)
    (models / NAMES[0]).rename(elsewhere)
    assert not check_models(models).ok
    check = check_models(models, semantic=str(elsewhere))
    assert check.ok and check.found["semantic"] == elsewhere
    gone = check_models(models, semantic=str(tmp_path / "nowhere"))
    assert gone.missing == [str(tmp_path / "nowhere")] and "does not exist" in gone.message


def test_nested_nnunet_layout_and_custom_names(tmp_path):
    models = _layout(tmp_path / "m")
    # some releases keep the nnU-Net files one level down, in the trainer/plans folder
    semantic = models / NAMES[0]
    nested = semantic / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    nested.mkdir()
    for name in ("inference_config.json", "plans.json", "dataset.json", "fold_0"):
        (semantic / name).rename(nested / name)
    check = check_models(models)
    assert check.ok and check.found["semantic"] == nested
    # a model id that is no release resolves by folder name, as SPINEPS does
    (models / NAMES[1]).rename(models / "MyInstance")
    assert check_models(models, instance="myinstance").found["instance"] == models / "MyInstance"


def test_env_variable_is_the_default(tmp_path, monkeypatch):
    models = _layout(tmp_path / "m")
    monkeypatch.setenv("SPINEPS_SEGMENTOR_MODELS", str(models))
    assert check_models(None).ok
    monkeypatch.setenv("SPINEPS_SEGMENTOR_MODELS", str(tmp_path / "empty"))
    assert not check_models(None).ok


def test_missing_spineps_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "spineps", None)  # makes `import spineps` fail
    with pytest.raises(SpinepsMissing) as err:
        import_spineps()
    assert "pip install 'batchseg[spineps]'" in str(err.value)
    with pytest.raises(SpinepsMissing):
        download_models(tmp_path)
    from batchseg.segmenters import load_segmenter

    with pytest.raises(SpinepsMissing):
        load_segmenter("spineps", {})


def test_models_check_prints_the_gpu_memory_a_project_has_seen(tmp_path):
    """Known once a study ran on a GPU (its metadata records torch's peak); until then it says so."""
    from batchseg.files import write_json
    from tests.conftest import batchseg, noop_project

    project = noop_project(tmp_path, 2, seed=4, models_dir=str(_layout(tmp_path / "models")))
    batchseg("run", "--project", str(project))
    check = batchseg("models", "check", "--project", str(project))
    assert "GPU memory per worker: not known yet" in check.stdout

    # what the SPINEPS segmenter adds on a GPU (segmenters/spineps.py, _gpu_peak): no GPU here
    metadata = sorted((project / "results" / "metadata").glob("*_metadata.json"))
    for path, peak in zip(metadata, (5120.0, 6656.0)):
        data = json.loads(path.read_text())
        data["segmenter"].update(gpu_name="NVIDIA H200", gpu_peak_memory_mb=peak)
        write_json(path, data)
    check = batchseg("models", "check", "--project", str(project))
    assert "GPU memory per worker on NVIDIA H200: 6.5 GiB held by torch at the peak (the largest of 2 done" \
        in " ".join(check.stdout.split())
