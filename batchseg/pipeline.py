"""One study end to end: convert, segment, measure, QC, metadata, publish.

Everything is written into a staging folder under the output root and renamed
into place at the end, one file at a time, metadata last: a file that exists is
complete, and a study whose metadata exists has all its outputs. The pipeline
never touches the ledger.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import __version__
from .errors import SetupError, StudyError
from .files import write_json
from .segmenters import Segmenter

STAGING = ".staging"


@dataclass
class StudyInput:
    study_id: str
    series_dir: Path
    series_id: str | None = None
    attempt: int = 1


@dataclass
class StudyOutcome:
    outputs: dict[str, str]              # output name -> final path
    timings: dict[str, float]            # seconds per stage
    metadata: dict[str, Any] = field(default_factory=dict)


def output_paths(out_dir: Path, study: str) -> dict[str, Path]:
    """Final location of every output of one study: the seed's names (docs/architecture.md, "Output layout")."""
    return {
        "nifti": out_dir / "nifti" / f"{study}_T2w.nii.gz",
        "vert_mask": out_dir / "segmentations" / f"{study}_seg-vert_msk.nii.gz",
        "spine_mask": out_dir / "segmentations" / f"{study}_seg-spine_msk.nii.gz",
        "ctd": out_dir / "segmentations" / f"{study}_ctd.json",
        "centroids": out_dir / "centroids" / f"{study}_centroids.json",
        "vertebra_labels": out_dir / "centroids" / f"{study}_vertebra_labels.json",
        "qc": out_dir / "qc" / f"{study}_qc.png",
        "qc_segmenter": out_dir / "qc" / f"{study}_spineps.png",
        "metadata": out_dir / "metadata" / f"{study}_metadata.json",
    }


class Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.current = "setup"

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.current = name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 4)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stage_error(stage: str, study: str, exc: BaseException) -> StudyError:
    if isinstance(exc, StudyError):
        return exc
    if stage == "segment":
        return StudyError("segment.error", f"study {study}: {type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return StudyError("output.io", f"study {study}: {stage}: {exc}")
    return StudyError("internal", f"study {study}: {stage}: {type(exc).__name__}: {exc}")


def run_study(study: StudyInput, segmenter: Segmenter, out_dir: Path, *,
              may_publish: Callable[[], bool] = lambda: True) -> StudyOutcome:
    """Run one study and publish its outputs; raises StudyError.

    `may_publish` is asked right before the first rename: False means another attempt owns the
    study now, and nothing is published.
    """
    import nibabel as nib

    from .dicom import convert_series
    from .measures import measure, read_label_map
    from .qc import write_qc_png

    sid = study.study_id
    out_dir = Path(out_dir)
    staging = out_dir / STAGING / f"{sid}-{uuid.uuid4().hex[:8]}"
    final = output_paths(out_dir, sid)
    staged = {name: staging / path.relative_to(out_dir) for name, path in final.items()}
    timer = Timer()
    started = time.time()
    # This attempt holds the claim, so staging left by an earlier attempt of the same study
    # belongs to a dead or superseded worker.
    for stale in (out_dir / STAGING).glob(f"{sid}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        for folder in {p.parent for p in staged.values()}:
            folder.mkdir(parents=True, exist_ok=True)
        with timer.stage("convert"):
            if not study.series_dir.is_dir():
                raise StudyError("input.missing", f"study {sid}: series folder {study.series_dir} does not exist")
            conversion = convert_series(study.series_dir, staged["nifti"], require_plane="sagittal", study=sid)

        with timer.stage("segment"):
            result = segmenter.segment(staged["nifti"], staging / "work", sid)
        for name, produced in (("vert_mask", result.vert_mask), ("spine_mask", result.spine_mask),
                               ("ctd", result.ctd_json), ("qc_segmenter", result.snapshot)):
            if produced is None:
                staged.pop(name)
                final.pop(name)
            else:
                os.replace(produced, staged[name])

        with timer.stage("measure"):
            labels, label_affine = read_label_map(staged["vert_mask"])
            # The semantic mask gives the vertebral-body centroids (SPINEPS's ctd points).
            spine = read_label_map(staged["spine_mask"])[0] if "spine_mask" in staged else None
            measurements = measure(labels, label_affine, spine=spine, labels_anatomical=result.labels_anatomical)
            write_json(staged["centroids"], measurements.centroids_json())
            write_json(staged["vertebra_labels"], measurements.vertebra_labels_json())

        with timer.stage("qc"):
            image = nib.load(staged["nifti"])
            write_qc_png(image.get_fdata(dtype="float32"), image.affine, labels, measurements, staged["qc"],
                         title=f"study {sid}")

        timer.current = "metadata"
        shutil.rmtree(staging / "work", ignore_errors=True)
        timings = {**timer.timings, **{f"segment.{k}": v for k, v in result.timings.items()}}
        timings["total"] = round(time.time() - started, 4)  # up to publishing, which follows
        metadata = {
            "study_id": sid,
            "series_id": study.series_id,
            "attempt": study.attempt,
            "input": {"series_dir": str(study.series_dir), "conversion": conversion.to_dict()},
            "segmenter": {**segmenter.describe(), **result.info, "labels_anatomical": result.labels_anatomical},
            "lstv": measurements.lstv_json(),
            "structures": len(measurements.structures),
            "versions": _versions(),
            "host": platform.node(),
            "started_at": started,
            "timings": timings,
            "outputs": {name: path.name for name, path in final.items()},
            "checksums": {name: sha256(staged[name]) for name in final if name != "metadata"},
        }
        write_json(staged["metadata"], metadata)

        with timer.stage("publish"):
            if not may_publish():
                raise StudyError("worker.lost", f"study {sid}: the claim was taken over before publishing")
            # Metadata goes last: its presence says every other output is in place. An older
            # metadata file goes first, so it never vouches for a half-replaced set.
            final["metadata"].unlink(missing_ok=True)
            for name in sorted(final, key=lambda n: n == "metadata"):
                final[name].parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged[name], final[name])
        timings["publish"] = timer.timings["publish"]
        timings["total"] = round(time.time() - started, 4)
        return StudyOutcome(outputs={k: str(v) for k, v in final.items()}, timings=timings, metadata=metadata)
    except SetupError:
        raise  # the worker's problem, not the study's
    except Exception as exc:
        raise _stage_error(timer.current, sid, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _versions() -> dict[str, str]:
    import nibabel
    import numpy
    import pydicom

    return {"batchseg": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "nibabel": nibabel.__version__, "pydicom": pydicom.__version__}

