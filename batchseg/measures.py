"""Label statistics of an instance mask in one pass: centroids, volumes, names, LSTV findings.

The counts and coordinate sums of every label come from `np.bincount` over the
labelled voxels only (one scan for the nonzero positions, then four bincounts),
so the cost does not grow with the number of labels: no per-label boolean mask
over the volume is ever built.

Voxel coordinates are (i, j, k) array indices; world coordinates come from the
NIfTI affine, i.e. RAS+ millimetres (docs/architecture.md, "Output layout").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import StudyError
from .labels import DISC_ABOVE_TOP, L6, LUMBAR, SACRUM, T13, VERTEBRA_NAMES, label_kind, label_name

# Labels above this are not SPINEPS labels; refusing them bounds the bincount size.
MAX_LABEL = 65535


@dataclass
class Structure:
    instance_id: int
    kind: str                     # vertebra | sacrum | disc | endplate | other
    anatomical_label: str
    centroid_voxel: tuple[float, float, float]
    centroid_world: tuple[float, float, float]
    volume_voxels: int
    volume_mm3: float

    @property
    def key(self) -> str:
        return f"{self.kind}_{self.instance_id}"


@dataclass
class LstvFindings:
    """Lumbosacral transitional vertebra evidence, as candidates for review (not diagnoses)."""

    assessed: bool
    lumbar_count: int | None
    l6_present: bool
    t13_present: bool
    candidates: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Measurements:
    structures: list[Structure]
    lstv: LstvFindings
    labels_anatomical: bool

    def centroids_json(self) -> dict:
        out = {}
        for s in self.structures:
            d = asdict(s)
            d.pop("kind")
            d["centroid_voxel"] = list(s.centroid_voxel)
            d["centroid_world"] = list(s.centroid_world)
            out[s.key] = d
        return out

    def vertebra_labels_json(self) -> dict:
        """Instance id (as text) -> anatomical name, for every label in the mask."""
        return {str(s.instance_id): s.anatomical_label for s in self.structures}

    def lstv_json(self) -> dict:
        return asdict(self.lstv)


def measure(mask: np.ndarray, affine: np.ndarray, *, labels_anatomical: bool = True) -> Measurements:
    """Measure every nonzero label of a 3-D integer label map."""
    labels = _as_labels(mask)
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise StudyError("measure.error", f"affine must be a finite 4x4 matrix, got shape {affine.shape}")

    # NIfTI arrays come Fortran-ordered: walk them in memory order, no copy.
    order = "F" if labels.flags.f_contiguous and not labels.flags.c_contiguous else "C"
    flat = labels.ravel(order=order)
    nz = np.flatnonzero(flat)
    lab = flat[nz]
    n = int(lab.max()) + 1 if lab.size else 1
    counts = np.bincount(lab, minlength=n)
    # Coordinate sums of integers in float64 stay exact up to 2**53: far beyond any volume.
    ijk = np.unravel_index(nz, labels.shape, order=order)
    sums = np.stack([np.bincount(lab, weights=c, minlength=n) for c in ijk], axis=1)

    present = [int(v) for v in np.flatnonzero(counts) if v != 0]
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    names = _names(present, labels_anatomical)
    structures = []
    for v in present:
        c = sums[v] / counts[v]
        w = affine[:3, :3] @ c + affine[:3, 3]
        structures.append(Structure(
            instance_id=v,
            kind=label_kind(v),
            anatomical_label=names[v],
            centroid_voxel=tuple(float(x) for x in c),
            centroid_world=tuple(float(x) for x in w),
            volume_voxels=int(counts[v]),
            volume_mm3=float(counts[v]) * voxel_mm3,
        ))
    return Measurements(structures, lstv_findings(present, labels_anatomical), labels_anatomical)


def read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, affine) of a NIfTI label map; StudyError("measure.error") when it cannot be read."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return np.asanyarray(img.dataobj), img.affine
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for a bad file
        raise StudyError("measure.error", f"{path}: cannot read label map ({type(e).__name__}: {e})") from e


def measure_file(path: Path, *, labels_anatomical: bool = True) -> Measurements:
    data, affine = read_label_map(path)
    try:
        return measure(data, affine, labels_anatomical=labels_anatomical)
    except StudyError as e:
        raise StudyError(e.error_class, f"{path}: {e.message}") from e


def lstv_findings(present: list[int], labels_anatomical: bool = True) -> LstvFindings:
    """LSTV candidates from the set of labels present (labels.py; docs/architecture.md, "Domain facts").

    Only evidence the labels can carry: L6 present, T13 present, the count of
    lumbar labels. Label 126 is never read as an S1-S2 disc or sacralization.
    """
    labels = set(present)
    notes: list[str] = []
    if DISC_ABOVE_TOP in labels:
        notes.append("label 126 present: disc above the top vertebra, not S1-S2")
    if not labels_anatomical:
        notes.insert(0, "not assessed: labels not anatomical (no labeling model; vertebrae are numbered top to bottom)")
        return LstvFindings(False, None, False, False, [], notes)

    lumbar = sorted(v for v in labels if v in LUMBAR)
    l6, t13 = L6 in labels, T13 in labels
    candidates = []
    if l6:
        candidates.append("lumbarization (L6 present)")
    if t13:
        candidates.append("thoracolumbar (T13 present)")
    if SACRUM in labels and lumbar == [20, 21, 22, 23]:
        # The labeling model has no 4-lumbar class, but a segmenter that counts
        # (or a shifted labeling) can show one; worth a look, nothing more.
        candidates.append("four lumbar vertebrae above the sacrum (sacralization or miscount)")
    if SACRUM not in labels:
        notes.append("sacrum (26) not in the mask: the lumbar count may be incomplete")
    if lumbar and lumbar != list(range(lumbar[0], lumbar[-1] + 1)):
        missing = [VERTEBRA_NAMES[v] for v in range(lumbar[0], lumbar[-1]) if v not in labels]
        notes.append(f"gap in lumbar labels: {', '.join(missing)} missing")
    return LstvFindings(True, len(lumbar), l6, t13, candidates, notes)


def _names(present: list[int], labels_anatomical: bool) -> dict[int, str]:
    if labels_anatomical:
        return {v: label_name(v, present) for v in present}
    # Without the labeling model SPINEPS numbers vertebrae top to bottom: the
    # number is an order, not an identity. Say so instead of naming a level.
    verts = [v for v in present if label_kind(v) == "vertebra"]
    rank = {v: i + 1 for i, v in enumerate(sorted(verts))}
    names = {}
    for v in present:
        kind = label_kind(v)
        if kind == "vertebra":
            names[v] = f"unlabelled vertebra #{rank[v]} from top"
        elif kind == "sacrum":
            names[v] = "sacrum"
        elif kind == "disc" and v == DISC_ABOVE_TOP:
            names[v] = label_name(v)
        elif kind == "disc" and v - 100 in rank:
            names[v] = f"unlabelled disc below vertebra #{rank[v - 100]}"
        elif kind == "endplate" and v - 200 in rank:
            names[v] = f"unlabelled endplate of vertebra #{rank[v - 200]}"
        else:
            names[v] = f"unlabelled {kind} (label {v})"
    return names


def _as_labels(mask: np.ndarray) -> np.ndarray:
    """The mask as a non-negative integer array (a view when it already is one)."""
    a = np.asarray(mask)
    if a.ndim != 3:
        raise StudyError("measure.error", f"label map must be 3-D, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        # Masks saved as float (some tools do) are fine if every value is a whole number.
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise StudyError("measure.error", f"label map holds non-integer values (dtype {a.dtype})")
        if a.size and (a.min() < 0 or a.max() > MAX_LABEL):
            raise StudyError("measure.error", f"label values must be within 0..{MAX_LABEL}")
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise StudyError("measure.error", f"label map must hold integers, got dtype {a.dtype}")
    if a.size and (int(a.min()) < 0 or int(a.max()) > MAX_LABEL):
        lo, hi = int(a.min()), int(a.max())
        raise StudyError("measure.error", f"label values must be within 0..{MAX_LABEL}, got {lo}..{hi}")
    # bincount needs a type that casts safely to intp.
    return a if a.dtype.kind == "i" or a.dtype.itemsize < 8 else a.astype(np.int64)
