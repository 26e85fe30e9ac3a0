"""The SPINEPS segmenter: one loaded `spineps.SpinepsPipeline` per process, many studies.

SPINEPS (and torch) are imported only when this segmenter is built, so the core runs without
the extra. Each study runs in its own work folder, because SPINEPS writes its outputs next to
the input (`<input dir>/derivatives_seg/`) and names them after a BIDS-like input name.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar, Iterator

from ..errors import SetupError, StudyError, one_line
from ..models import ENV_MODELS, check_models, default_models_dir, disabled, import_spineps, looks_like_path, resolve_model
from .protocol import SegmentResult

log = logging.getLogger(__name__)

# SPINEPS's inner stages, as the module-level functions `spineps.seg_run.segment_image` calls;
# timing them is the only way to see them (SPINEPS only prints its own timings).
_STAGES = {
    "preprocess_input": "preprocess",        # intensity normalisation, crop, N4 bias correction
    "predict_semantic_mask": "semantic",
    "predict_instance_mask": "instance",
    "phase_postprocess_combined": "post",    # includes the labeling model
    "predict_centroids_from_both": "centroids",
    "mri_snapshot": "snapshot",
}
_MAX_MESSAGE = 300


def _what(exc: BaseException) -> str:
    """An exception as 'Type: message' on one line, short enough for the ledger."""
    return one_line(f"{type(exc).__name__}: {exc}", _MAX_MESSAGE)


class SpinepsSetupError(SetupError):
    """The SPINEPS models could not be loaded: a problem of the installation, not of a study."""


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _bids_subject(study_id: str) -> str:
    # BIDS subject labels are alphanumeric; SPINEPS names every output sub-<label>_...
    return re.sub(r"[^A-Za-z0-9]", "", str(study_id)) or "study"


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


# The networks' own calls, on the loaded models: the time a GPU is busy with a study (each
# returns its result on the CPU, so the time includes the device's work). The rest of a study's
# time is CPU work that runs while another worker's networks use the GPU (benchmarks/gpu.py).
_NETWORK_CALLS = (
    ("model_semantic", "predictor", "predict_logits_from_preprocessed_data", "net_semantic"),  # sliding window
    ("model_instance", None, "_forward_argmax", "net_instance"),                              # cutout batches
    ("model_labeling", None, "_run_array", "net_labeling"),                                   # one per vertebra
)


def _timed_calls(targets: list[tuple[Any, str, str]], timings: dict[str, float]) -> contextlib.ExitStack:
    """Replace each (owner, attribute) function with one adding its seconds to timings[key]; undone on exit."""
    stack = contextlib.ExitStack()

    def timed(key: str, func):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
        return wrapper

    for owner, name, key in targets:
        original = getattr(owner, name)
        if name in vars(owner):      # a module's function (or an attribute already set): put it back
            stack.callback(setattr, owner, name, original)
        else:                        # a method found on the class: drop the instance's override
            stack.callback(delattr, owner, name)
        setattr(owner, name, timed(key, original))
    return stack


@contextlib.contextmanager
def _stage_timer(timings: dict[str, float], pipeline: Any = None) -> Iterator[None]:
    """Time SPINEPS's inner stages (and, given the pipeline, its networks) for one call; then put all back."""
    from spineps import seg_run

    targets = [(seg_run, name, key) for name, key in _STAGES.items() if hasattr(seg_run, name)]
    for model_name, part, name, key in _NETWORK_CALLS if pipeline is not None else ():
        owner = getattr(pipeline, model_name, None)
        owner = getattr(owner, part, None) if part and owner is not None else owner
        if owner is not None and callable(getattr(owner, name, None)):
            targets.append((owner, name, key))
    with _timed_calls(targets, timings):
        yield


class SpinepsSegmenter:
    """Runs SPINEPS (semantic -> instance -> labeling -> centroids) on one sagittal T2w NIfTI at a time."""

    name = "spineps"
    # Pipelines built in this process; a worker should build one, whatever the number of studies.
    pipelines_created: ClassVar[int] = 0

    def __init__(self, semantic: str = "t2w", instance: str = "instance", labeling: str | None = "t2w_labeling",
                 models_dir: str | None = None, device: str = "auto") -> None:
        import_spineps()  # fail at start-up, with the install hint, rather than on the first study
        self.semantic = str(semantic)
        self.instance = str(instance)
        self.labeling = None if disabled(labeling) else str(labeling)
        self.models_dir = Path(models_dir).expanduser().resolve() if models_dir else None
        if self.models_dir is not None:
            # before SPINEPS resolves any model id; it reads the variable on every lookup
            os.environ[ENV_MODELS] = str(self.models_dir)
        self.device = self._pick_device(device)
        self._pipeline = None
        self._pipeline_instance = 0
        self._studies_on_pipeline = 0
        self._load_seconds = 0.0
        self._folders: dict[str, str] = {}

    # -- set-up ---------------------------------------------------------------------------

    @staticmethod
    def _pick_device(device: str) -> str:
        import torch

        device = (device or "auto").lower()
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"spineps device must be auto, cpu or cuda, not {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise SpinepsSetupError("spineps device 'cuda' was asked for, but torch sees no CUDA GPU "
                                    f"(torch {torch.__version__}); use device = 'auto' or 'cpu'")
        return device

    def _model_args(self) -> dict[str, Any]:
        """What to hand SpinepsPipeline: local folders when found, else the ids (SPINEPS downloads those)."""
        models_dir = self.models_dir or default_models_dir()
        wanted = {"semantic": self.semantic, "instance": self.instance, "labeling": self.labeling}
        if self.models_dir is not None or any(looks_like_path(v) for v in wanted.values() if v):
            # a configured folder must be complete: a batch node must never start a download
            check = check_models(models_dir, self.semantic, self.instance, self.labeling)
            if not check.ok:
                raise SpinepsSetupError(check.message)
            return {kind: (check.found[kind] if kind in check.found else None) for kind in wanted}
        args: dict[str, Any] = {}
        for kind, value in wanted.items():
            if value is None:
                args[kind] = None
                continue
            folder, _, _ = resolve_model(kind, value, models_dir)
            args[kind] = folder if folder is not None else value
        return args

    def _ensure_pipeline(self):
        if self._pipeline is not None:
            return self._pipeline
        spineps = import_spineps()
        args = self._model_args()
        start = time.perf_counter()
        try:
            pipeline = spineps.SpinepsPipeline(args["semantic"], args["instance"], args["labeling"],
                                               use_cpu=self.device == "cpu")
        except Exception as exc:
            raise SpinepsSetupError(f"SPINEPS could not load its models ({_what(exc)}); "
                                    "check them with `batchseg models check`") from exc
        self._load_seconds = time.perf_counter() - start
        if self.device == "cpu":
            self._limit_threads()
        self._folders = {kind: str(getattr(pipeline, f"model_{kind}").model_folder)
                         for kind in ("semantic", "instance", "labeling") if getattr(pipeline, f"model_{kind}") is not None}
        SpinepsSegmenter.pipelines_created += 1
        self._pipeline_instance = SpinepsSegmenter.pipelines_created
        self._pipeline = pipeline
        log.info("SPINEPS pipeline %d loaded in %.1f s on %s: %s", self._pipeline_instance, self._load_seconds,
                 self.device, self._folders)
        return pipeline

    @staticmethod
    def _limit_threads() -> None:
        # SPINEPS sets torch's threads to the machine's core count; under Slurm the job owns fewer,
        # and workers sharing an allocation each own their share (placement.py)
        import torch

        from ..placement import worker_threads

        torch.set_num_threads(worker_threads())

    # -- protocol -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        import torch

        return {
            "name": self.name,
            "spineps_version": _version("spineps"),
            "torch_version": torch.__version__,
            "device": self.device,
            "models": {"semantic": self.semantic, "instance": self.instance, "labeling": self.labeling},
            "model_folders": dict(self._folders),
            "models_dir": str(self.models_dir) if self.models_dir else None,
            "labeling": self.labeling is not None,
        }

    def segment(self, nifti: Path, workdir: Path, study_id: str) -> SegmentResult:
        nifti = Path(nifti)
        if not nifti.is_file():
            raise StudyError("input.missing", f"study {study_id}: NIfTI {nifti} does not exist")
        pipeline = self._ensure_pipeline()
        from spineps.seg_enums import ErrCode

        image = self._stage_input(nifti, Path(workdir), study_id)
        timings: dict[str, float] = {}
        if self._studies_on_pipeline == 0:
            timings["model_load"] = self._load_seconds
        self._studies_on_pipeline += 1
        self._reset_gpu_peak()
        start = time.perf_counter()
        try:
            with _stage_timer(timings, pipeline):
                # override: a retried attempt must not pick up a previous attempt's files
                result = pipeline.segment(image, override=True)
        except StudyError:
            raise
        except Exception as exc:
            if _is_oom(exc):
                self._free_gpu()
                raise StudyError("segment.oom", f"study {study_id}: out of memory in SPINEPS: {_what(exc)}") from exc
            raise StudyError("segment.error", f"study {study_id}: SPINEPS failed: {_what(exc)}") from exc
        timings["spineps_total"] = time.perf_counter() - start

        code = result.errcode
        if code == ErrCode.COMPATIBILITY:
            raise StudyError("input.not_sagittal",
                             f"study {study_id}: SPINEPS refused the image as incompatible with its sagittal T2w model")
        if code == ErrCode.EMPTY:
            raise StudyError("segment.empty", f"study {study_id}: SPINEPS found no spine structures")
        if code not in (ErrCode.OK, ErrCode.ALL_DONE):
            raise StudyError("segment.error", f"study {study_id}: SPINEPS returned {code}")
        paths = result.output_paths or {}
        outputs = {key: Path(paths[key]) if key in paths else None for key in ("out_vert", "out_spine", "out_ctd")}
        for key, path in outputs.items():
            if path is None or not path.is_file():
                raise StudyError("segment.error", f"study {study_id}: SPINEPS reported success but wrote no {key} file")
        snapshot = Path(paths["out_snap"]) if paths.get("out_snap") else None
        return SegmentResult(
            vert_mask=outputs["out_vert"],
            spine_mask=outputs["out_spine"],
            ctd_json=outputs["out_ctd"],
            snapshot=snapshot if snapshot is not None and snapshot.is_file() else None,
            labels_anatomical=pipeline.model_labeling is not None,
            info={**self._study_info(), **self._gpu_peak()},
            timings=timings,
        )

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _stage_input(nifti: Path, workdir: Path, study_id: str) -> Path:
        """Put the input in the study's own folder under the name SPINEPS needs (sub-<id>_T2w)."""
        suffix = ".nii.gz" if nifti.name.endswith(".nii.gz") else ".nii"
        workdir.mkdir(parents=True, exist_ok=True)
        image = workdir / f"sub-{_bids_subject(study_id)}_T2w{suffix}"
        if image.is_symlink() or image.exists():
            image.unlink()
        try:
            image.symlink_to(nifti.resolve())
        except OSError:  # file systems without symlinks
            shutil.copy2(nifti, image)
        return image

    def _study_info(self) -> dict[str, Any]:
        return {
            **self.describe(),
            "pipeline_instance": self._pipeline_instance,
            "studies_on_pipeline": self._studies_on_pipeline,
            "model_load_seconds": round(self._load_seconds, 3),
        }

    def _reset_gpu_peak(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def _gpu_peak(self) -> dict[str, Any]:
        """The most GPU memory torch held for this study (what `models check` reports), on a GPU only."""
        if self.device != "cuda":
            return {}
        import torch

        return {"gpu_name": torch.cuda.get_device_name(),
                "gpu_peak_memory_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1)}

    def _free_gpu(self) -> None:
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


__all__ = ["SpinepsSegmenter", "SpinepsSetupError"]
