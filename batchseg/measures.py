"""Label statistics of an instance mask: centroids, volumes, pieces, names, the ordered sequence, LSTV findings.

The counts and coordinate sums of every label come from `np.bincount` over the
labelled voxels only (one scan for the nonzero positions, then four bincounts),
so the cost does not grow with the number of labels: no per-label boolean mask
over the volume is ever built. Connected components (components.py) work on
runs of that same list of labelled voxels; per-piece sums are only computed for
labels that are split.

Two centroids, named (docs/architecture.md, "Domain facts"):
* `centroid_voxel` / `centroid_world`: the centre of mass of the WHOLE label
  (for a vertebra: body, arch and processes).
* `body_centroid_voxel` / `body_centroid_world`: the centre of mass of the
  vertebra label restricted to the vertebral-body classes (49, 50) of the
  semantic mask: the point SPINEPS's ctd.json holds. Only with a semantic mask;
  null for a vertebra with no body voxel and for the sacrum (no body class).

Voxel coordinates are (i, j, k) indices of the NIfTI array; world coordinates
come from the NIfTI affine, i.e. RAS+ millimetres.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .components import memory_order, voxel_components
from .enumeration import SpineSequence, build_sequence
from .errors import StudyError
from .labels import SACRUM, SEM_BODY_CLASSES, label_kind
from .lstv import LstvFindings, assess
from .structures import Piece, Structure

# Labels above this are not SPINEPS labels; refusing them bounds the bincount size.
MAX_LABEL = 65535
# 26-connectivity: pieces touching at a corner are one piece (the and TPTBox's choice).
CONNECTIVITY = 26

DEFINITIONS = {
    "centroid_voxel": "centre of mass of the whole label (a vertebra's body, arch and processes), voxel indices "
                      "(i, j, k) of the NIfTI grid",
    "centroid_world": "the same point in world RAS+ millimetres (through the NIfTI affine)",
    "body_centroid_voxel": "centre of mass of the vertebra label restricted to the vertebral-body classes (49, 50) "
                           "of the semantic mask, voxel indices (i, j, k): the point SPINEPS's ctd.json holds; "
                           "null when the label has no body voxel, and for the sacrum (no body class; SPINEPS's "
                           "ctd gives the whole sacrum's centroid_voxel); absent without a semantic mask",
    "body_centroid_world": "the body centroid in world RAS+ millimetres",
    "volume_voxels": "number of voxels of the label",
    "volume_mm3": "volume_voxels times the voxel volume (|det| of the affine's 3x3 part), cubic millimetres",
    "components": "26-connected pieces of the label; endplate labels (200+X) hold the endplates on both sides of "
                  "disc 100+X, so two is normal for them",
    "pieces": "only when components > 1: every piece, largest first, with its centroid and volume",
    "anatomical_label": "name from the ordered sequence: a disc after the structures above and below it",
}


@dataclass
class Measurements:
    structures: list[Structure]
    sequence: SpineSequence
    lstv: LstvFindings
    labels_anatomical: bool
    semantic: bool = False        # a semantic mask gave body centroids

    def centroids_json(self) -> dict:
        out: dict = {"definitions": DEFINITIONS}
        for s in self.structures:
            d: dict = {"instance_id": s.instance_id, "anatomical_label": s.anatomical_label,
                       "centroid_voxel": list(s.centroid_voxel), "centroid_world": list(s.centroid_world)}
            if self.semantic and s.kind in ("vertebra", "sacrum"):
                d["body_centroid_voxel"] = _maybe_list(s.body_centroid_voxel)
                d["body_centroid_world"] = _maybe_list(s.body_centroid_world)
            d.update(volume_voxels=s.volume_voxels, volume_mm3=s.volume_mm3, components=s.components)
            if s.pieces:
                d["pieces"] = [{"centroid_voxel": list(p.centroid_voxel), "centroid_world": list(p.centroid_world),
                                "volume_voxels": p.volume_voxels} for p in s.pieces]
            out[s.key] = d
        return out

    def vertebra_labels_json(self) -> dict:
        """Instance id (as text) -> anatomical name, for every label in the mask."""
        return {str(s.instance_id): s.anatomical_label for s in self.structures}

    def lstv_json(self) -> dict:
        return self.lstv.to_json()


def measure(mask: np.ndarray, affine: np.ndarray, *, spine: np.ndarray | None = None,
            labels_anatomical: bool = True) -> Measurements:
    """Measure every nonzero label of a 3-D integer label map; `spine` is the semantic mask on the same grid."""
    labels = _as_labels(mask)
    affine = check_affine(affine)
    if spine is not None:
        spine = np.asarray(spine)
        if spine.shape != labels.shape:
            raise StudyError("measure.error", f"semantic mask shape {spine.shape} differs from the instance mask's "
                                              f"{labels.shape}")

    # NIfTI arrays come Fortran-ordered: walk them in memory order, no copy.
    order = memory_order(labels)
    flat = labels.ravel(order=order)
    nz = np.flatnonzero(flat)
    lab = flat[nz]
    n = int(lab.max()) + 1 if lab.size else 1
    counts = np.bincount(lab, minlength=n)
    # Coordinate sums of integers in float64 stay exact up to 2**53: far beyond any volume.
    ijk = np.unravel_index(nz, labels.shape, order=order)
    sums = np.stack([np.bincount(lab, weights=c, minlength=n) for c in ijk], axis=1)

    comp, n_comp = voxel_components(nz, lab, labels.shape, order, CONNECTIVITY)
    comp_label = np.zeros(n_comp, dtype=np.int64)
    comp_label[comp] = lab
    n_pieces = np.bincount(comp_label, minlength=n)

    body = None
    if spine is not None:
        sem = np.asarray(spine).ravel(order=order)[nz]
        body = np.isin(sem, SEM_BODY_CLASSES)
        body_counts = np.bincount(lab[body], minlength=n)
        body_sums = np.stack([np.bincount(lab[body], weights=c[body], minlength=n) for c in ijk], axis=1)

    pieces: dict[int, list[Piece]] = {}
    split = np.flatnonzero(n_pieces > 1)
    if split.size:
        # Per-piece sums only for the voxels of split labels.
        sel = np.isin(lab, split)
        pieces = _pieces(comp[sel], comp_label, [c[sel] for c in ijk], None if body is None else body[sel],
                         n_comp, affine)

    present = [int(v) for v in np.flatnonzero(counts) if v != 0]
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    structures = []
    for v in present:
        c = sums[v] / counts[v]
        s = Structure(
            instance_id=v,
            kind=label_kind(v),
            anatomical_label="",
            centroid_voxel=_point(c),
            centroid_world=_point(_world(affine, c)),
            volume_voxels=int(counts[v]),
            volume_mm3=float(counts[v]) * voxel_mm3,
            components=int(n_pieces[v]),
            pieces=pieces.get(v, []),
        )
        if body is not None and s.kind == "vertebra" and body_counts[v]:
            b = body_sums[v] / body_counts[v]
            s.body_centroid_voxel, s.body_centroid_world = _point(b), _point(_world(affine, b))
        structures.append(s)

    sequence = build_sequence(structures, labels_anatomical)
    for s in structures:
        s.anatomical_label = sequence.label_names[s.instance_id]
    sacrum_top = None
    if any(s.components > 1 and s.kind == "disc" for s in structures) and SACRUM < n and counts[SACRUM]:
        # Only to tell a disc inside the sacrum from one above it: the sacrum's topmost voxel along the spine.
        at = lab == SACRUM
        pts = np.stack([c[at] for c in ijk]).astype(float)
        along = np.asarray(sequence.axis_world) @ _world(affine, pts)
        top = sequence.entries[0]     # position_mm counts from it
        sacrum_top = float(along.min() - np.dot(top.centroid_world, sequence.axis_world))
    lstv = assess(sequence, structures, sacrum_top_mm=sacrum_top)
    return Measurements(structures, sequence, lstv, labels_anatomical, semantic=spine is not None)


def check_affine(affine: np.ndarray) -> np.ndarray:
    """The affine as a float 4x4 array; StudyError("measure.error") unless finite and invertible."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise StudyError("measure.error", f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    sv = np.linalg.svd(affine[:3, :3], compute_uv=False)
    if sv[0] == 0.0 or sv[-1] <= sv[0] * 1e-9:
        what = "zero" if sv[0] == 0.0 else "singular"
        raise StudyError("measure.error", f"the affine is {what} (its 3x3 part has rank {int(np.sum(sv > sv[0] * 1e-9))}"
                                          "): voxels have no size or direction, so no centroid or volume in mm exists")
    return affine


def _pieces(comp: np.ndarray, comp_label: np.ndarray, ijk: list[np.ndarray], body: np.ndarray | None,
            n_comp: int, affine: np.ndarray) -> dict[int, list[Piece]]:
    counts = np.bincount(comp, minlength=n_comp)
    sums = np.stack([np.bincount(comp, weights=c, minlength=n_comp) for c in ijk], axis=1)
    if body is not None:
        body_counts = np.bincount(comp[body], minlength=n_comp)
        body_sums = np.stack([np.bincount(comp[body], weights=c[body], minlength=n_comp) for c in ijk], axis=1)
    out: dict[int, list[Piece]] = {}
    for c in np.flatnonzero(counts):
        p = Piece(_point(sums[c] / counts[c]), _point(_world(affine, sums[c] / counts[c])), int(counts[c]))
        if body is not None and body_counts[c] and label_kind(int(comp_label[c])) == "vertebra":
            b = body_sums[c] / body_counts[c]
            p.body_centroid_voxel, p.body_centroid_world = _point(b), _point(_world(affine, b))
        out.setdefault(int(comp_label[c]), []).append(p)
    for v in out:
        out[v].sort(key=lambda p: -p.volume_voxels)   # stable: ties keep memory order
    return out


def _world(affine: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Voxel point(s) (3,) or (3, N) -> RAS+ mm, as the seed computed it (bit for bit)."""
    return affine[:3, :3] @ c + (affine[:3, 3] if c.ndim == 1 else affine[:3, 3:4])


def _point(c: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(x) for x in c)


def _maybe_list(p: tuple | None) -> list | None:
    return None if p is None else list(p)


def read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, affine) of a NIfTI label map; StudyError("measure.error") when it cannot be read."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return np.asanyarray(img.dataobj), img.affine
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for a bad file
        raise StudyError("measure.error", f"{path}: cannot read label map ({type(e).__name__}: {e})") from e


def measure_file(path: Path, *, spine: Path | None = None, labels_anatomical: bool = True) -> Measurements:
    """Measure the instance mask at `path`, with the semantic mask at `spine` (same grid) for body centroids."""
    data, affine = read_label_map(path)
    spine_data = None
    if spine is not None:
        spine_data, spine_affine = read_label_map(spine)
        if spine_data.shape != data.shape or not np.allclose(spine_affine, affine, atol=1e-3):
            raise StudyError("measure.error", f"{spine}: the semantic mask is not on the grid of {path}")
    try:
        return measure(data, affine, spine=spine_data, labels_anatomical=labels_anatomical)
    except StudyError as e:
        raise StudyError(e.error_class, f"{path}: {e.message}") from e


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
