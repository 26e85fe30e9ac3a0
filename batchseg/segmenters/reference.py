"""A classical segmenter for batchseg's synthetic phantoms ONLY (batchseg/synth.py).

It reads the phantom's intensity code instead of anatomy: voxels within
TIER_HALF_WIDTH of a tier's code value belong to that tier (thoracic body,
lumbar body, sacrum, disc, "repeat_label" body); 6-connected components of one
tier are the structures; they are ordered superior -> inferior by world z and
named by counting, as a labeling model that sees the junctions would:
thoracic bodies from T10, the phantom's fixed top (T10, T11, T12, then T13 for
a 4th); lumbar bodies from L1 below a thoracic one (L1-L5, then L6 for a 6th),
or, with no thoracic body in view, upwards from the sacrum (the last one L5);
a "repeat_label" body takes the label of the body above it (SPINEPS's "too many
T12"). A disc takes the label 100+X of the vertebra just above it (two discs
under one vertebra are merged into one label, as SPINEPS merges a disc inside
the sacrum into 124), or, with no vertebra above it, 126 when the sacrum is in
view and the top vertebra's label - 1 + 100 when not, as SPINEPS does. On real
MRI this is meaningless; it exists so the whole batch machinery can be tested
end to end against known answers without a GPU.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import labels
from ..components import label_components
from ..errors import StudyError
from ..files import write_json
from ..synth import INTENSITY_T2, TIER_HALF_WIDTH
from .protocol import SegmentResult

THORACIC, LUMBAR, SACRUM, DISC, REPEAT = 1, 2, 3, 4, 5
_TIERS = ((THORACIC, "thoracic"), (LUMBAR, "lumbar"), (SACRUM, "sacrum"), (DISC, "disc"), (REPEAT, "repeat_label"))
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

    comp, n = label_components(tiers, connectivity=6)
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
    bodies = [c for c in keep if tier_of[c] in (THORACIC, LUMBAR, REPEAT)]
    thoracic = [c for c in bodies if tier_of[c] == THORACIC]
    lumbar = [c for c in bodies if tier_of[c] == LUMBAR]
    sacrum = [c for c in keep if tier_of[c] == SACRUM]
    discs = [c for c in keep if tier_of[c] == DISC]
    if len(thoracic) > len(THORACIC_LABELS) or len(lumbar) > len(LUMBAR_LABELS):
        raise StudyError("segment.error", f"{who}{len(thoracic)} thoracic and {len(lumbar)} lumbar bodies: "
                                          "more than the phantom convention (T10-T13, L1-L6) allows")
    rank = {THORACIC: 0, REPEAT: 0, LUMBAR: 1, SACRUM: 2}
    tiers_down = [rank[int(tier_of[c])] for c in bodies + sacrum]
    if tiers_down != sorted(tiers_down) or sorted(bodies + sacrum, key=lambda c: -z_world[c]) != bodies + sacrum:
        raise StudyError("segment.error", f"{who}vertebral tiers are out of order along the spine")

    if thoracic or not sacrum or len(lumbar) == len(LUMBAR_LABELS):
        lumbar_labels = LUMBAR_LABELS[:len(lumbar)]
    else:
        # Only the lumbosacral junction in view: the last lumbar body above the sacrum is L5.
        lumbar_labels = LUMBAR_LABELS[len(LUMBAR_LABELS) - 1 - len(lumbar):len(LUMBAR_LABELS) - 1]
    next_thoracic, next_lumbar = iter(THORACIC_LABELS), iter(lumbar_labels)
    label_of = np.zeros(n + 1, dtype=np.uint8)
    for i, c in enumerate(bodies):
        if tier_of[c] == REPEAT:
            if i == 0:
                raise StudyError("segment.error", f"{who}a repeat-label body with no body above it")
            label_of[c] = label_of[bodies[i - 1]]
        else:
            label_of[c] = next(next_thoracic if tier_of[c] == THORACIC else next_lumbar)
    for c in sacrum:   # one sacrum, however many pieces the threshold left
        label_of[c] = labels.SACRUM
    for c in discs:
        above = [b for b in bodies if z_world[b] > z_world[c]]
        if above:
            label_of[c] = labels.DISC_OFFSET + label_of[above[-1]]
        elif sacrum:
            label_of[c] = labels.DISC_ABOVE_TOP
        else:
            label_of[c] = labels.DISC_OFFSET + label_of[bodies[0]] - 1 if bodies else labels.DISC_ABOVE_TOP

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
