"""A classical segmenter for batchseg's synthetic phantoms ONLY (batchseg/synth.py).

It reads the phantom's intensity code instead of anatomy: voxels within
TIER_HALF_WIDTH of a tier's code value belong to that tier (thoracic body,
lumbar body, sacrum, disc); 6-connected components of one tier are the
structures; they are ordered superior -> inferior by world z and named by
counting from T10, the phantom's fixed top (T10, T11, T12, then T13 for a 4th
thoracic body; L1-L5, then L6 for a 6th lumbar body). A disc takes the label
100+X of the vertebra just above it, or 126 when no vertebra is above it, as
SPINEPS does. On real MRI this is meaningless; it exists so the whole batch
machinery can be tested end to end against known answers without a GPU.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import labels
from ..errors import StudyError
from ..files import write_json
from ..synth import INTENSITY_T2, TIER_HALF_WIDTH
from .protocol import SegmentResult

THORACIC, LUMBAR, SACRUM, DISC = 1, 2, 3, 4
_TIERS = ((THORACIC, "thoracic"), (LUMBAR, "lumbar"), (SACRUM, "sacrum"), (DISC, "disc"))
# Counting from the phantom's fixed top (T10); the transitional vertebra comes last in its tier.
THORACIC_LABELS = (*(labels.LABELS[n] for n in ("T10", "T11", "T12")), labels.T13)
LUMBAR_LABELS = (*range(labels.L1, labels.L5 + 1), labels.L6)
# The seg-spine labels this segmenter writes, with their names (recorded in the result's info).
SEMANTIC_LABELS = {str(v): labels.semantic_name(v)
                   for v in (labels.SEM_VERTEBRAL_BODY, labels.SEM_DISC, labels.SEM_SACRUM)}


class ReferenceSegmenter:
    name = "reference"

    def __init__(self, min_volume_mm3: float = 50.0):
        # Components smaller than this are noise, not structures (the smallest
        # phantom disc holds ~5000 mm3).
        self.min_volume_mm3 = float(min_volume_mm3)

    def describe(self) -> dict[str, Any]:
        return {"name": "reference",
                "note": "classical threshold segmenter for batchseg's synthetic phantoms only; not for real MRI"}

    def segment(self, nifti: Path, workdir: Path, study_id: str) -> SegmentResult:
        t0 = time.perf_counter()
        try:
            img = nib.load(str(nifti))
            data = np.asarray(img.get_fdata(dtype=np.float32))
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for a bad file
            raise StudyError("segment.error", f"study {study_id}: cannot read {nifti} "
                                              f"({type(e).__name__}: {e})") from e
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise StudyError("segment.error", f"study {study_id}: expected a 3-D image, got shape {data.shape}")
        t1 = time.perf_counter()
        vert, spine, centroids = segment_volume(data, img.affine, study_id=study_id,
                                                min_volume_mm3=self.min_volume_mm3)
        t2 = time.perf_counter()

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        vert_path = workdir / f"{study_id}_seg-vert_msk.nii.gz"
        spine_path = workdir / f"{study_id}_seg-spine_msk.nii.gz"
        ctd_path = workdir / f"{study_id}_ctd.json"
        try:
            _save_labels(vert, img, vert_path)
            _save_labels(spine, img, spine_path)
            write_json(ctd_path, ctd_json(centroids, img.affine, data.shape))
        except OSError as e:
            raise StudyError("output.io", f"study {study_id}: cannot write segmentation: {e}") from e
        return SegmentResult(
            vert_mask=vert_path, spine_mask=spine_path, ctd_json=ctd_path, labels_anatomical=True,
            info={**self.describe(), "semantic_labels": SEMANTIC_LABELS},
            timings={"load": t1 - t0, "segment": t2 - t1, "write": time.perf_counter() - t2},
        )


def segment_volume(data: np.ndarray, affine: np.ndarray, *, study_id: str = "",
                   min_volume_mm3: float = 50.0) -> tuple[np.ndarray, np.ndarray, dict[int, tuple]]:
    """(instance labels, semantic labels, {vertebra label: voxel centroid}) of a phantom volume."""
    who = f"study {study_id}: " if study_id else ""
    tiers = np.zeros(data.shape, dtype=np.int8)
    for tier, name in _TIERS:
        tiers[np.abs(data - INTENSITY_T2[name]) <= TIER_HALF_WIDTH] = tier

    comp, n = label_components(tiers)
    if n == 0:
        raise StudyError("segment.empty", f"{who}no voxel matches the phantom intensity code")
    flat = comp.reshape(-1)
    nz = np.flatnonzero(flat)
    lab = flat[nz]
    counts = np.bincount(lab, minlength=n + 1)
    ijk = np.unravel_index(nz, comp.shape)
    centroid = np.stack([np.bincount(lab, weights=c, minlength=n + 1) for c in ijk], axis=1)
    centroid[1:] /= counts[1:, None]
    z_world = centroid @ affine[2, :3] + affine[2, 3]
    tier_of = np.zeros(n + 1, dtype=np.int8)
    tier_of[lab] = tiers.reshape(-1)[nz]
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))

    keep = [c for c in range(1, n + 1) if counts[c] * voxel_mm3 >= min_volume_mm3]
    if not keep:
        raise StudyError("segment.empty", f"{who}only components smaller than {min_volume_mm3} mm3 found")
    # Superior first: RAS z grows upwards.
    keep.sort(key=lambda c: -z_world[c])
    thoracic = [c for c in keep if tier_of[c] == THORACIC]
    lumbar = [c for c in keep if tier_of[c] == LUMBAR]
    sacrum = [c for c in keep if tier_of[c] == SACRUM]
    discs = [c for c in keep if tier_of[c] == DISC]
    if len(thoracic) > len(THORACIC_LABELS) or len(lumbar) > len(LUMBAR_LABELS):
        raise StudyError("segment.error", f"{who}{len(thoracic)} thoracic and {len(lumbar)} lumbar bodies: "
                                          "more than the phantom convention (T10-T13, L1-L6) allows")
    order = thoracic + lumbar + sacrum
    if sorted(order, key=lambda c: -z_world[c]) != order:
        raise StudyError("segment.error", f"{who}vertebral tiers are out of order along the spine")

    label_of = np.zeros(n + 1, dtype=np.uint8)
    for c, v in zip(thoracic, THORACIC_LABELS):
        label_of[c] = v
    for c, v in zip(lumbar, LUMBAR_LABELS):
        label_of[c] = v
    for c in sacrum:   # one sacrum, however many pieces the threshold left
        label_of[c] = labels.SACRUM
    bodies = thoracic + lumbar
    for c in discs:
        above = [b for b in bodies if z_world[b] > z_world[c]]
        label_of[c] = labels.DISC_OFFSET + label_of[above[-1]] if above else labels.DISC_ABOVE_TOP
    used = label_of[discs]
    if len(set(used.tolist())) != len(discs):
        raise StudyError("segment.error", f"{who}two discs between the same pair of vertebrae")

    vert = label_of[comp]
    sem_of = np.zeros(n + 1, dtype=np.uint8)
    sem_of[bodies] = labels.SEM_VERTEBRAL_BODY
    sem_of[sacrum] = labels.SEM_SACRUM
    sem_of[discs] = labels.SEM_DISC
    spine = sem_of[comp]

    # Centroid of each named vertebra (pieces of one sacrum weighted by size).
    cents: dict[int, tuple] = {}
    for v in sorted(set(label_of[bodies + sacrum].tolist())):
        cs = [c for c in bodies + sacrum if label_of[c] == v]
        w = counts[cs].astype(float)
        cents[v] = tuple(float(x) for x in (centroid[cs] * w[:, None]).sum(0) / w.sum())
    return vert, spine, cents


def label_components(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """6-connected components of voxels sharing one nonzero class value.

    Returns (int32 array with 0 for background and 1..n per component, n).
    Union-find in numpy: every pair of equal face neighbours is an edge; each
    round hooks the larger root of every unresolved edge onto the smaller one,
    then compresses paths fully. Parents only ever decrease, so no cycle can
    form, and each round at least merges every root that has a smaller
    neighbour, so a handful of rounds suffices on compact shapes.
    """
    classes = np.ascontiguousarray(classes)
    flat = classes.reshape(-1)
    fg = np.flatnonzero(flat)
    out = np.zeros(classes.shape, dtype=np.int32)
    if fg.size == 0:
        return out, 0
    a_parts, b_parts = [], []
    for axis in range(classes.ndim):
        lo = [slice(None)] * classes.ndim
        hi = [slice(None)] * classes.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        left, right = classes[tuple(lo)], classes[tuple(hi)]
        same = (left == right) & (left != 0)
        f = np.ravel_multi_index(np.nonzero(same), classes.shape)
        stride = int(np.prod(classes.shape[axis + 1:], dtype=np.int64))
        a_parts.append(np.searchsorted(fg, f))
        b_parts.append(np.searchsorted(fg, f + stride))
    a = np.concatenate(a_parts)
    b = np.concatenate(b_parts)
    parent = np.arange(fg.size)
    while a.size:
        ra, rb = parent[a], parent[b]
        open_ = ra != rb
        if not open_.any():
            break
        a, b, ra, rb = a[open_], b[open_], ra[open_], rb[open_]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    roots, inverse = np.unique(parent, return_inverse=True)
    flat_out = out.reshape(-1)
    flat_out[fg] = inverse.astype(np.int32) + 1
    return out, int(roots.size)


def ctd_json(centroids: dict[int, tuple], affine: np.ndarray, shape: tuple[int, ...]) -> list:
    """SPINEPS/TPTBox centroid file: [header, {"<vertebra>": {"50": [i, j, k]}}] in voxel indices."""
    affine = np.asarray(affine, float)
    zoom = np.linalg.norm(affine[:3, :3], axis=0)
    header = {
        "direction": list(nib.aff2axcodes(affine)),
        "zoom": [float(z) for z in zoom],
        "shape": [int(s) for s in shape[:3]],
        "origin": [float(v) for v in affine[:3, 3]],
        "rotation": (affine[:3, :3] / zoom).tolist(),
        "format": "POI",
        "level_one_info": "Vertebra_Instance",
        "level_two_info": "Location",
    }
    body = {str(v): {"50": [round(c, 4) for c in cents]} for v, cents in sorted(centroids.items())}
    return [header, body]


def _save_labels(mask: np.ndarray, like: nib.Nifti1Image, path: Path) -> None:
    """A uint8 label map on the grid (affine, sform/qform codes) of `like`."""
    hdr = like.header.copy()
    hdr.set_data_dtype(np.uint8)
    out = type(like)(mask.astype(np.uint8, copy=False), like.affine, hdr)
    out.header.set_slope_inter(1.0, 0.0)
    nib.save(out, path)
