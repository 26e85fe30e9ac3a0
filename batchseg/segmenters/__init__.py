"""Segmenters: what turns one sagittal T2w NIfTI into SPINEPS-style label maps.

A worker creates its segmenter once (`load_segmenter`) and calls `segment` for
every study it claims, so model loading is paid once per process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import StudyError


@dataclass
class SegmentResult:
    """Files a segmenter wrote for one study, inside the folder it was given."""

    vert_mask: Path                   # instance mask, SPINEPS labels (CONTEXT.md §3)
    spine_mask: Path | None = None    # semantic / subregion mask
    ctd_json: Path | None = None      # the segmenter's own centroid file, as written
    snapshot: Path | None = None      # the segmenter's own QC picture (SPINEPS's snapshot), when it made one
    labels_anatomical: bool = True    # False when labels are only a top-to-bottom order
    info: dict[str, Any] = field(default_factory=dict)  # versions, models, device
    timings: dict[str, float] = field(default_factory=dict)  # seconds per inner stage


class Segmenter(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """`name`, versions, model ids and device, recorded in every study's metadata."""

    def segment(self, nifti: Path, workdir: Path, study_id: str) -> SegmentResult:
        """Segment `nifti`, writing only under `workdir`; raise StudyError on failure."""


def _reference(options: dict[str, Any]) -> Segmenter:
    from .reference import ReferenceSegmenter

    return ReferenceSegmenter(**options)


def _noop(options: dict[str, Any]) -> Segmenter:
    from .noop import NoopSegmenter

    return NoopSegmenter(**options)


def _spineps(options: dict[str, Any]) -> Segmenter:
    from .spineps import SpinepsSegmenter

    return SpinepsSegmenter(**options)


SEGMENTERS: dict[str, Callable[[dict[str, Any]], Segmenter]] = {
    "reference": _reference,
    "noop": _noop,
    "spineps": _spineps,
}


def load_segmenter(name: str, options: dict[str, Any] | None = None) -> Segmenter:
    try:
        factory = SEGMENTERS[name]
    except KeyError:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}") from None
    return factory(dict(options or {}))


__all__ = ["SegmentResult", "Segmenter", "StudyError", "load_segmenter", "SEGMENTERS"]
