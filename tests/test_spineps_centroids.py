"""Body centroids against SPINEPS's own ctd.json, on masks the real SPINEPS code made (designed-weight models)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("spineps")

from batchseg.measures import measure_file  # noqa: E402
from batchseg.segmenters.spineps import SpinepsSegmenter  # noqa: E402
from tests.spineps_models import build_random_models, sagittal_phantom  # noqa: E402

pytestmark = pytest.mark.spineps


def _add_arches(nii):
    """SPINEPS's semantic-mask hook: a vertebral arch (41) behind every body, touching it.

    The designed semantic net paints bodies and discs only, so a vertebra label would be its body alone and
    the two centroids could not differ; with arches they differ by millimetres, as on real output.
    """
    arr = nii.get_seg_array()
    body = arr == 49
    posterior = nii.orientation.index("P")          # the model works in (P, I, R): axis 0 runs posteriorly
    arch = np.zeros_like(body)
    for k in range(1, 16):
        arch |= np.roll(body, k, axis=posterior)
    arr[(arr == 0) & arch] = 41
    return nii.set_array(arr)


@pytest.fixture(scope="module")
def spineps_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from spineps.seg_enums import ErrCode
    from spineps.seg_run import segment_image
    from TPTBox import BIDS_FILE

    os.environ.setdefault("SPINEPS_NO_CITATION_REMINDER", "1")
    root = tmp_path_factory.mktemp("spineps-ctd")
    segmenter = SpinepsSegmenter(models_dir=str(build_random_models(root / "models")), device="cpu")
    pipeline = segmenter._ensure_pipeline()
    nifti = sagittal_phantom(root / "in" / "sub-1001_T2w.nii.gz", n_bodies=6)
    paths, code = segment_image(BIDS_FILE(nifti, nifti.parent), model_semantic=pipeline.model_semantic,
                                model_instance=pipeline.model_instance, model_labeling=pipeline.model_labeling,
                                override_semantic=True, override_instance=True, override_postpair=True,
                                override_ctd=True, lambda_semantic=_add_arches)
    assert code == ErrCode.OK
    return {key: Path(paths[key]) for key in ("out_vert", "out_spine", "out_ctd")}


def test_body_centroid_is_spineps_ctd_within_one_voxel(spineps_outputs: dict[str, Path]) -> None:
    spine = np.asanyarray(nib.load(spineps_outputs["out_spine"]).dataobj)
    vert = np.asanyarray(nib.load(spineps_outputs["out_vert"]).dataobj)
    assert np.count_nonzero((spine == 41) & (vert > 0) & (vert < 100)) > 0, "arches belong to the vertebrae"
    m = measure_file(spineps_outputs["out_vert"], spine=spineps_outputs["out_spine"])
    _, ctd = json.loads(spineps_outputs["out_ctd"].read_text())
    vertebrae = [s for s in m.structures if s.kind == "vertebra"]
    assert len(vertebrae) >= 4 and {str(s.instance_id) for s in vertebrae} <= set(ctd)
    for s in vertebrae:
        spineps_point = np.array(ctd[str(s.instance_id)]["50"], float)
        assert np.max(np.abs(np.subtract(s.body_centroid_voxel, spineps_point))) <= 1.0, s.instance_id
        # The whole-label centroid is another point: the arch pulls it posteriorly by millimetres.
        shift = np.linalg.norm(np.subtract(s.centroid_world, s.body_centroid_world))
        assert shift > 2.0, (s.instance_id, shift)
