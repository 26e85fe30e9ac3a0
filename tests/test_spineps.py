"""The SPINEPS segmenter, run for real on CPU with designed-weight models (tests/spineps_models.py)."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

spineps = pytest.importorskip("spineps")

from batchseg.errors import StudyError  # noqa: E402
from batchseg.models import MODEL_RELEASES, check_models, download_models  # noqa: E402
from batchseg.segmenters import load_segmenter  # noqa: E402
from batchseg.segmenters.spineps import SpinepsSegmenter, SpinepsSetupError  # noqa: E402

from .spineps_models import (  # noqa: E402
    INSTANCE_NAME, LABELING_NAME, SEMANTIC_NAME, build_random_models, sagittal_phantom,
)

pytestmark = pytest.mark.spineps


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails loudly: the weights are local, and tests never go online."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return build_random_models(tmp_path_factory.mktemp("spineps_models"))


@pytest.fixture(scope="module")
def segmenter(models_dir) -> SpinepsSegmenter:
    return SpinepsSegmenter(models_dir=str(models_dir), device="auto")


def test_two_studies_share_one_pipeline(segmenter, tmp_path):
    results, built = [], []
    for study in ("1001", "1002"):
        nifti = sagittal_phantom(tmp_path / f"in/{study}_T2w.nii.gz")
        results.append(segmenter.segment(nifti, tmp_path / f"work{study}", study))
        built.append(SpinepsSegmenter.pipelines_created)
    first, second = results
    assert built[0] == built[1]                      # the second study built nothing
    assert first.info["pipeline_instance"] == second.info["pipeline_instance"]
    assert second.info["studies_on_pipeline"] == first.info["studies_on_pipeline"] + 1
    assert "model_load" not in second.timings

    for study, result in zip(("1001", "1002"), results):
        work = tmp_path / f"work{study}"
        assert result.vert_mask == work / "derivatives_seg" / f"sub-{study}_mod-T2w_seg-vert_msk.nii.gz"
        assert result.spine_mask == work / "derivatives_seg" / f"sub-{study}_mod-T2w_seg-spine_msk.nii.gz"
        assert result.ctd_json == work / "derivatives_seg" / f"sub-{study}_mod-T2w_seg-spine_ctd.json"
        vert = nib.load(result.vert_mask)
        labels = set(np.unique(np.asarray(vert.dataobj)).tolist()) - {0}
        vertebrae = {v for v in labels if v < 100}
        assert len(vertebrae) == 5                       # the phantom's five bodies
        assert {v + 100 for v in vertebrae} & labels     # and discs below them
        assert vert.shape == (14, 128, 128)
        spine = set(np.unique(np.asarray(nib.load(result.spine_mask).dataobj)).tolist())
        assert spine == {0, 49, 100}
        header, centroids = json.loads(result.ctd_json.read_text())
        assert header["shape"] == [14, 128, 128]
        assert {int(k) for k in centroids} == vertebrae
        assert all(list(c) == ["50"] and len(c["50"]) == 3 for c in centroids.values())
        assert result.labels_anatomical is True
        info = result.info
        assert info["spineps_version"] == "2.1.3" or info["spineps_version"].startswith("2.")
        assert info["torch_version"]
        assert info["labeling"] is True
        assert info["device"] in ("cpu", "cuda")
        assert info["models"] == {"semantic": "t2w", "instance": "instance", "labeling": "t2w_labeling"}
        assert Path(info["model_folders"]["semantic"]).name == SEMANTIC_NAME
        assert Path(info["model_folders"]["labeling"]).name == LABELING_NAME
        for stage in ("preprocess", "semantic", "instance", "post", "centroids", "spineps_total"):
            assert result.timings[stage] >= 0.0
        assert result.timings["spineps_total"] >= result.timings["semantic"]


def test_pipeline_built_once_per_segmenter(models_dir, tmp_path):
    seg = SpinepsSegmenter(models_dir=str(models_dir), device="cpu", labeling="")
    before = SpinepsSegmenter.pipelines_created
    a = seg.segment(sagittal_phantom(tmp_path / "a.nii.gz"), tmp_path / "wa", "7")
    b = seg.segment(sagittal_phantom(tmp_path / "b.nii.gz"), tmp_path / "wb", "8")
    assert SpinepsSegmenter.pipelines_created == before + 1
    assert a.info["pipeline_instance"] == b.info["pipeline_instance"] == before + 1
    assert (a.info["studies_on_pipeline"], b.info["studies_on_pipeline"]) == (1, 2)
    assert "model_load" in a.timings and "model_load" not in b.timings
    # labeling off: labels are only a top-to-bottom order
    assert a.labels_anatomical is False and a.info["labeling"] is False
    assert "labeling" not in a.info["model_folders"]


def test_registry_and_folder_paths(models_dir, tmp_path):
    seg = load_segmenter("spineps", {
        "semantic": str(models_dir / SEMANTIC_NAME), "instance": str(models_dir / INSTANCE_NAME),
        "labeling": str(models_dir / LABELING_NAME), "device": "cpu",
    })
    assert seg.name == "spineps"
    result = seg.segment(sagittal_phantom(tmp_path / "x.nii.gz"), tmp_path / "w", "55")
    assert result.vert_mask.is_file()
    assert result.info["model_folders"]["instance"] == str(models_dir / INSTANCE_NAME)


def test_axial_image_is_not_sagittal(segmenter, tmp_path):
    data = np.zeros((128, 128, 14), dtype=np.int16)
    data[30:90, 30:90, 3:11] = 700
    axial = tmp_path / "axial.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 4.0, 1.0])), str(axial))
    with pytest.raises(StudyError) as err:
        segmenter.segment(axial, tmp_path / "w", "3001")
    assert err.value.error_class == "input.not_sagittal"
    assert "3001" in err.value.message


def test_no_spine_is_empty(segmenter, tmp_path):
    path = sagittal_phantom(tmp_path / "blank.nii.gz", n_bodies=0)
    with pytest.raises(StudyError) as err:
        segmenter.segment(path, tmp_path / "w", "3002")
    assert err.value.error_class == "segment.empty"


def test_corrupt_nifti_is_segment_error(segmenter, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b\x08not a nifti at all")
    with pytest.raises(StudyError) as err:
        segmenter.segment(broken, tmp_path / "w", "3003")
    assert err.value.error_class == "segment.error"
    assert err.value.message.startswith("study 3003: SPINEPS failed:")
    assert "\n" not in err.value.message


def test_missing_input_is_input_missing(segmenter, tmp_path):
    with pytest.raises(StudyError) as err:
        segmenter.segment(tmp_path / "nope.nii.gz", tmp_path / "w", "3004")
    assert err.value.error_class == "input.missing"


def test_gpu_out_of_memory_is_segment_oom(segmenter, tmp_path, monkeypatch):
    import torch

    pipeline = segmenter._ensure_pipeline()

    def oom(*args, **kwargs):  # a GPU is the one thing these machines lack
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipeline, "segment", oom)
    with pytest.raises(StudyError) as err:
        segmenter.segment(sagittal_phantom(tmp_path / "o.nii.gz"), tmp_path / "w", "3005")
    assert err.value.error_class == "segment.oom"
    assert err.value.retryable


def test_errcodes_map_to_classes(segmenter, tmp_path, monkeypatch):
    from spineps.api import SpinepsResult
    from spineps.seg_enums import ErrCode

    pipeline = segmenter._ensure_pipeline()
    expected = {ErrCode.COMPATIBILITY: "input.not_sagittal", ErrCode.EMPTY: "segment.empty",
                ErrCode.UNKNOWN: "segment.error", ErrCode.SHAPE: "segment.error"}
    nifti = sagittal_phantom(tmp_path / "e.nii.gz")
    for code, error_class in expected.items():
        monkeypatch.setattr(pipeline, "segment", lambda *a, code=code, **k: SpinepsResult(errcode=code, output_paths={}))
        with pytest.raises(StudyError) as err:
            segmenter.segment(nifti, tmp_path / "w", "3006")
        assert err.value.error_class == error_class


def test_missing_weights_fail_before_any_download(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    seg = SpinepsSegmenter(models_dir=str(empty), device="cpu")
    with pytest.raises(SpinepsSetupError) as err:
        seg.segment(sagittal_phantom(tmp_path / "m.nii.gz"), tmp_path / "w", "3007")
    message = str(err.value)
    for name in (SEMANTIC_NAME, INSTANCE_NAME, LABELING_NAME):
        assert name in message
    assert f"batchseg models download --to {empty}" in message


def test_check_models_accepts_random_folders(models_dir):
    check = check_models(models_dir, "t2w", "instance", "t2w_labeling")
    assert check.ok, check.message
    assert check.found["semantic"] == models_dir / SEMANTIC_NAME
    assert check.found["instance"] == models_dir / INSTANCE_NAME
    assert check.found["labeling"] == models_dir / LABELING_NAME


def test_model_releases_match_spineps_registry():
    from spineps.utils import auto_download as ad

    registry = {"t2w": (ad.semantic, ad.current_highest_version),
                "instance": (ad.instances, ad.current_instance_highest_version),
                "t2w_labeling": (ad.labeling, ad.current_labeling_highest_version)}
    for model_id, (urls, release) in registry.items():
        assert MODEL_RELEASES[model_id].url == urls[model_id]
        assert MODEL_RELEASES[model_id].folder == f"{ad.download_names[model_id]}_{release}"


def test_download_models_uses_spineps_downloader(tmp_path, monkeypatch):
    from spineps.utils import auto_download

    calls = []

    def fake_download(url, out_path):  # the network is the part that cannot run here
        calls.append((url, Path(out_path)))
        Path(out_path).mkdir(parents=True)

    monkeypatch.setattr(auto_download, "download_weights", fake_download)
    folders = download_models(tmp_path / "w")
    assert [f.name for f in folders] == [r.folder for r in MODEL_RELEASES.values()]
    assert calls == [(r.url, tmp_path / "w" / r.folder) for r in MODEL_RELEASES.values()]


def test_the_networks_own_calls_are_timed_and_put_back(segmenter, tmp_path):
    """segment.net_* are the seconds a GPU would be busy (benchmarks/gpu.py, submit's advice); nothing stays patched."""
    result = segmenter.segment(sagittal_phantom(tmp_path / "t.nii.gz"), tmp_path / "w", "4401")
    for key, within in (("net_semantic", "semantic"), ("net_instance", "instance"), ("net_labeling", "post")):
        assert 0 < result.timings[key] <= result.timings[within], (key, result.timings)
    pipeline = segmenter._pipeline
    assert "predict_logits_from_preprocessed_data" not in vars(pipeline.model_semantic.predictor)
    assert "_forward_argmax" not in vars(pipeline.model_instance)
    assert "_run_array" not in vars(pipeline.model_labeling)
    assert "gpu_peak_memory_mb" not in result.info          # on the CPU there is no GPU peak to report
