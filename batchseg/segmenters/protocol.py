"""What a segmenter is (`Segmenter`) and what it hands back for one study (`SegmentResult`).

A leaf module: the segmenters import it, and so does the registry in `__init__.py` that
builds them, so neither has to import the other's module to share these two types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class SegmentResult:
    """Files a segmenter wrote for one study, inside the folder it was given."""

    vert_mask: Path                   # instance mask, SPINEPS labels (labels.py)
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
