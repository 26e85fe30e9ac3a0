"""A plumbing segmenter: no image analysis, for testing the batch machinery.

It waits `delay` seconds (so tests can kill a worker or let a lease expire
mid-study), with `deaf: true` holding back TERM, INT and USR1 while it waits (as a long
call into C code does: the worker cannot release its study before Slurm's SIGKILL),
fails on purpose for the study ids in `fail_studies`, and otherwise
writes an instance mask on the input's grid holding one small box labelled 20
(L1) at the centre.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import StudyError
from ..labels import L1
from .protocol import SegmentResult


class NoopSegmenter:
    name = "noop"

    def __init__(self, delay: float = 0.0, fail_studies: list[str] | None = None, deaf: bool = False):
        self.delay = float(delay)
        self.fail_studies = {str(s) for s in (fail_studies or [])}
        self.deaf = bool(deaf)

    def describe(self) -> dict[str, Any]:
        return {"name": "noop", "note": "plumbing check: no image analysis, one box labelled L1",
                "delay": self.delay}

    def _wait(self) -> None:
        if not self.deaf:
            time.sleep(self.delay)
            return
        held = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            time.sleep(self.delay)
        finally:  # what arrived meanwhile is delivered here
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    def segment(self, nifti: Path, workdir: Path, study_id: str) -> SegmentResult:
        t0 = time.perf_counter()
        if self.delay > 0:
            self._wait()
        if str(study_id) in self.fail_studies:
            raise StudyError("segment.error", f"study {study_id}: noop segmenter told to fail this study")
        try:
            img = nib.load(str(nifti))
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for a bad file
            raise StudyError("segment.error", f"study {study_id}: cannot read {nifti} ({type(e).__name__}: {e})") from e
        shape = img.shape[:3]
        mask = np.zeros(shape, dtype=np.uint8)
        half = [max(1, n // 10) for n in shape]
        centre = [n // 2 for n in shape]
        mask[tuple(slice(max(0, c - h), c + h) for c, h in zip(centre, half))] = L1

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / f"{study_id}_seg-vert_msk.nii.gz"
        hdr = img.header.copy()
        hdr.set_data_dtype(np.uint8)
        vert = type(img)(mask, img.affine, hdr)
        vert.header.set_slope_inter(1.0, 0.0)
        try:
            nib.save(vert, out)
        except OSError as e:
            raise StudyError("output.io", f"study {study_id}: cannot write {out}: {e}") from e
        return SegmentResult(vert_mask=out, labels_anatomical=True, info=self.describe(),
                             timings={"segment": time.perf_counter() - t0})
