"""One study end to end: convert, segment, measure, level check, QC, metadata, publish.

Everything is written into a staging folder under the output root and renamed
into place at the end, one file at a time, metadata last: a file that exists is
complete, and a study whose metadata exists has all its outputs. Publishing holds
the study's lock file (results/.locks/<study>.lock) from the claim check through the
last rename, so two attempts of one study never interleave their renames. The
pipeline never touches the ledger: the caller's `may_publish` does.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import platform
import shutil
import signal
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from . import __version__
from .errors import LedgerUnreachable, SetupError, StudyError
from .files import write_json
from .inputs import StudySource, prepare
from .outputs import file_name_part, output_paths
from .segmenters import Segmenter

if TYPE_CHECKING:
    from .annotations import StudyAnnotations

STAGING = ".staging"
LOCKS = ".locks"
# Tests only: a worker whose environment names a fault point here stops itself (SIGSTOP) when it
# reaches that point, as a frozen process would. Unset in production: one dictionary lookup.
FAULT_ENV = "BATCHSEG_FAULT_STOP_AT"


@dataclass
class StudyInput:
    study_id: str
    source: StudySource               # where the image is: a DICOM folder or listing, or a NIfTI file
    series_id: str | None = None
    attempt: int = 1
    link_nifti: bool = False          # a NIfTI input is symlinked into place instead of copied
    token: str | None = None             # the ledger token of this attempt, recorded in the metadata
    # The radiologists' level points on this series (annotations.py); None: the run was given none.
    annotations: StudyAnnotations | None = None


@dataclass
class StudyOutcome:
    outputs: dict[str, str]              # output name -> final path
    timings: dict[str, float]            # seconds per stage
    metadata: dict[str, Any] = field(default_factory=dict)


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
              may_publish: Callable[[], bool] = lambda: True, lock_timeout: float = 900.0) -> StudyOutcome:
    """Run one study and publish its outputs; raises StudyError.

    `may_publish` is asked under the study's publish lock, right before the first rename: False
    means another attempt owns the study now, and nothing is published.
    """
    import nibabel as nib

    from .levels import check_study, lstv_with_levels
    from .measures import measure, read_label_map
    from .qc import write_qc_png

    sid = study.study_id
    out_dir = Path(out_dir)
    staging = out_dir / STAGING / f"{sid}-{uuid.uuid4().hex[:8]}"
    final = output_paths(out_dir, sid)
    staged = {name: staging / path.relative_to(out_dir) for name, path in final.items()}
    timer = Timer()
    started = time.time()
    try:
        clear_stale_staging(out_dir, sid)
        for folder in {p.parent for p in staged.values()}:
            folder.mkdir(parents=True, exist_ok=True)
        with timer.stage("convert"):
            # A DICOM series is converted; a NIfTI input is checked the same way and copied (inputs.py).
            # A converted series' volume stays in memory for the QC picture: reading back and unzipping the
            # file just written cost a fifth of a no-op study at 512x512.
            conversion, volume, volume_affine = prepare(study.source, staged["nifti"], study=sid,
                                                        series=study.series_id, link=study.link_nifti)

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

        with timer.stage("levels"):
            # Against the radiologists' level points; reads DICOM headers only (levels.py).
            # The points are placed through the series' own files: an RSNA series folder (no other layout has points).
            folder = study.source.path if study.source.kind == "dicom_folder" else None
            levels = check_study(study.annotations, folder, measurements.sequence,
                                 series_uid=conversion.series_uid or None).to_json()

        with timer.stage("qc"):
            if volume is None:   # a NIfTI input, copied: read once, here
                image = nib.load(staged["nifti"])
                volume, volume_affine = image.get_fdata(dtype="float32"), image.affine
            write_qc_png(volume, volume_affine, labels, measurements, staged["qc"],
                         title=f"study {sid}")

        timer.current = "metadata"
        shutil.rmtree(staging / "work", ignore_errors=True)
        timings = {**timer.timings, **{f"segment.{k}": v for k, v in result.timings.items()}}
        timings["total"] = round(time.time() - started, 4)  # up to publishing, which follows
        metadata = {
            "study_id": sid,
            "series_id": study.series_id,
            "attempt": study.attempt,
            "token": study.token,
            "input": {**study.source.describe(), "conversion": conversion.to_dict()},
            "segmenter": {**segmenter.describe(), **result.info, "labels_anatomical": result.labels_anatomical},
            "lstv": lstv_with_levels(measurements.lstv_json(), levels),
            "levels": levels,
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
            publish(out_dir, sid, staged, final, may_publish, lock_timeout)
        timings["publish"] = timer.timings["publish"]
        timings["total"] = round(time.time() - started, 4)
        return StudyOutcome(outputs={k: str(v) for k, v in final.items()}, timings=timings, metadata=metadata)
    except (SetupError, LedgerUnreachable):
        raise  # the worker's problem, not the study's
    except Exception as exc:
        raise _stage_error(timer.current, sid, exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def clear_stale_staging(out_dir: Path, sid: str) -> None:
    """Remove staging left by earlier attempts of this study (dead or superseded workers).

    This attempt holds the claim, so `<study>-*` under results/.staging is nobody's work. Nothing
    is deleted through a symbolic link: a linked .staging is refused, and a link inside it is
    removed as a link, never followed.
    """
    root = out_dir / STAGING
    if root.is_symlink():
        raise StudyError("output.io", f"study {sid}: {root} is a symbolic link; batchseg neither writes nor "
                                      "deletes through it: make it a plain folder")
    if not root.is_dir():
        return
    for stale in root.glob(f"{glob.escape(file_name_part(sid))}-*"):
        if stale.is_symlink() or not stale.is_dir():
            stale.unlink(missing_ok=True)
        else:
            shutil.rmtree(stale, ignore_errors=True)   # rmtree never follows links inside the tree


def fault_point(name: str) -> None:
    """Stop this process here when the test-only FAULT_ENV names this point (see FAULT_ENV)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)


@contextmanager
def study_lock(out_dir: Path, sid: str, timeout: float) -> Iterator[None]:
    """Hold the study's publish lock (a POSIX lock on results/.locks/<study>.lock, NFS-safe).

    Every attempt publishes under it, so a worker frozen between its claim check and its renames
    keeps the winner waiting instead of having its outputs overwritten or deleted afterwards. The
    kernel drops the lock of a process that dies. Waits at most `timeout` seconds.
    """
    folder = out_dir / LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{file_name_part(sid)}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:   # held by another attempt (EAGAIN / EACCES)
                if time.monotonic() > deadline:
                    raise StudyError("output.io", f"study {sid}: another worker held its publish lock "
                                                  f"{folder / (sid + '.lock')} for {timeout:.0f} s") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)   # releases the lock


def publish(out_dir: Path, sid: str, staged: dict[str, Path], final: dict[str, Path],
            may_publish: Callable[[], bool], lock_timeout: float) -> None:
    """Confirm the claim and rename every output into place as one fenced step (the study's lock)."""
    with study_lock(out_dir, sid, lock_timeout):
        if not may_publish():
            raise StudyError("worker.lost", f"study {sid}: the claim was taken over before publishing")
        fault_point("publish")
        # Metadata goes last: its presence says every other output is in place. An older
        # metadata file goes first, so it never vouches for a half-replaced set; an older
        # attempt's output that this one does not produce goes too.
        every = output_paths(out_dir, sid)
        every["metadata"].unlink(missing_ok=True)
        for name, path in every.items():
            if name not in final:
                path.unlink(missing_ok=True)
        for name in sorted(final, key=lambda n: n == "metadata"):
            final[name].parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged[name], final[name])


def _versions() -> dict[str, str]:
    import nibabel
    import numpy
    import pydicom

    return {"batchseg": __version__, "python": platform.python_version(), "numpy": numpy.__version__,
            "nibabel": nibabel.__version__, "pydicom": pydicom.__version__}

