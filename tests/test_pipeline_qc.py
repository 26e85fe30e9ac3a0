"""The QC picture is drawn from the volume in memory, not from the NIfTI file the pipeline has just written."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from batchseg.inputs import StudySource
from batchseg.measures import measure_file
from batchseg.pipeline import StudyInput, run_study
from batchseg.qc import write_qc_png
from batchseg.segmenters import load_segmenter
from batchseg.synth import read_manifest, synth_dataset


def test_qc_reads_no_nifti_back_and_draws_the_image_as_written(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    synth_dataset(data, 1, seed=3, matrix=64, broken=False)
    study, info = next(iter(read_manifest(data)["studies"].items()))
    series = data / "train_images" / study / str(info["series"]["Sagittal T2/STIR"])
    segmenter = load_segmenter("noop")
    loads: list[tuple[str, bool]] = []    # (file, inside the segmenter)
    inside = [False]
    real_load, real_segment = nib.load, segmenter.segment

    def spy_load(path, *args, **kwargs):
        loads.append((Path(str(path)).name, inside[0]))
        return real_load(path, *args, **kwargs)

    def spy_segment(*args, **kwargs):
        inside[0] = True
        try:
            return real_segment(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(nib, "load", spy_load)
    monkeypatch.setattr(segmenter, "segment", spy_segment)
    out = tmp_path / "results"
    outcome = run_study(StudyInput(study, StudySource("dicom_folder", series), info["series"]["Sagittal T2/STIR"]),
                        segmenter, out)
    monkeypatch.undo()
    nifti_name = Path(outcome.outputs["nifti"]).name
    assert (nifti_name, False) not in loads, "only the segmenter reads the image back"

    # The same picture as one drawn from the published NIfTI: the volume in memory is the image as written.
    image = nib.load(outcome.outputs["nifti"])
    again = tmp_path / "again.png"
    write_qc_png(image.get_fdata(dtype="float32"), image.affine, np.asanyarray(nib.load(outcome.outputs["vert_mask"]).dataobj),
                 measure_file(Path(outcome.outputs["vert_mask"])), again, title=f"study {study}")
    with Image.open(outcome.outputs["qc"]) as ours, Image.open(again) as theirs:
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
