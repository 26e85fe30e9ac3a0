"""Synthetic RSNA-layout datasets: phantom lumbar spines with known labels.

A dataset looks like the RSNA 2024 Lumbar Spine training split (docs/architecture.md, "Domain facts"):
`{split}_series_descriptions.csv`, `train.csv`, `{split}_label_coordinates.csv`,
`{split}_images/{study}/{series}/{instance}.dcm`, plus what the real data lacks:
`ground_truth/{study}_seg-vert_msk.nii.gz` (the phantom's instance labels),
`ground_truth/manifest.json` and `study_ids.txt`.

The phantom conventions (the "intensity code") stand in for the anatomy a real
model learns, so that a classical segmenter (segmenters/reference.py) can name
the structures by counting:

* The field of view starts at T10: the topmost structure is the T10 body, a
  few mm below the top edge, with nothing above it; except the variants that
  start lower (top_L1, top_L2), whose topmost structure is the disc above
  L1 / L2 (SPINEPS's 126), with nothing above it.
* On the Sagittal T2/STIR series every voxel of a class has one code value
  (INTENSITY_T2) plus Gaussian noise clipped at NOISE_CLIP. Thoracic
  (rib-bearing) bodies, lumbar bodies, sacrum and discs (bright, as on T2) are
  separate tiers, so `|value - code| <= TIER_HALF_WIDTH` recovers every class
  exactly: the nearest other code is more than TIER_HALF_WIDTH + NOISE_CLIP away.
* Labels are decided at voxel centres, so the ground truth is exactly what the
  image encodes; no partial-volume voxels.

* A body coded "repeat_label" stands for a labeling-model error: the
  segmenter must give it the label of the body above it (SPINEPS's "too many
  T12"), as the ground truth does.

Ground truth labels are SPINEPS's (docs/architecture.md, "Domain facts"): T10-T12 17-19, T13 28,
L1-L5 20-24, L6 25, sacrum 26, disc below vertebra X 100+X, 126 the disc above
the top vertebra; a disc inside the sacrum is merged into 124, as SPINEPS
merges it. Each variant's manifest entry says the LSTV findings expected from
it (`expected_lstv`: pattern, count_assessable, lumbar_count).

The ground-truth grid is the one a correct converter (batchseg.dicom) builds
from the Sagittal T2/STIR files: array axes (column, row, slice), slices sorted
by position along cross(row direction, column direction), affine from
ImageOrientationPatient / ImagePositionPatient / PixelSpacing turned LPS -> RAS.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage

from .files import write_json
from .enumeration import name_structures
from .labels import DISC_ABOVE_TOP, DISC_OFFSET, L1, L5, L6, LABELS, T12, T13, VERTEBRA_NAMES, disc_name, label_kind
from .labels import SACRUM as SACRUM_LABEL

# The order in which studies cycle through them: the first five give a not-assessable study to an 8-study demo.
VARIANTS = ("normal", "L6", "T13", "four_lumbar", "top_L2", "eleven_thoracic", "sacral_disc", "top_L1",
            "no_sacrum", "duplicate_T12")
BROKEN_KINDS = ("no_t2", "truncated", "missing_folder")
SAG_T2, SAG_T1, AX_T2 = "Sagittal T2/STIR", "Sagittal T1", "Axial T2"
CANAL_CONDITION = "Spinal Canal Stenosis"

# Phantom tissue classes. Structure classes (>= THORACIC) carry labels.
AIR, SOFT, CANAL, THORACIC, LUMBAR, SACRUM, DISC, REPEAT = range(8)
CLASS_NAMES = ("air", "soft_tissue", "canal", "thoracic", "lumbar", "sacrum", "disc", "repeat_label")
# T2 intensity code (the contract with segmenters/reference.py). "repeat_label": a thoracic-sized body that
# the labeling model gives the label of the body above it.
INTENSITY_T2 = {"air": 30, "soft_tissue": 220, "canal": 380, "thoracic": 700, "lumbar": 1000,
                "sacrum": 1300, "disc": 1700, "repeat_label": 2050}
# T1 look: fat-bright soft tissue, dark discs. Nobody segments T1; it only has to look different.
INTENSITY_T1 = {"air": 20, "soft_tissue": 520, "canal": 200, "thoracic": 640, "lumbar": 660,
                "sacrum": 700, "disc": 330, "repeat_label": 640}
NOISE_SIGMA = 35.0
NOISE_CLIP = 105.0          # 3 sigma: noise never carries a voxel across a tier boundary
TIER_HALF_WIDTH = 150.0     # a voxel belongs to a tier when |value - code| <= this

# Body sizes in mm (S-I height, L-R width, A-P depth) and disc heights.
THORACIC_BODY = (18.0, 34.0, 26.0)
LUMBAR_BODY = (23.0, 44.0, 32.0)
THORACIC_DISC = 6.0
LUMBAR_DISC = 8.5
SACRUM_WIDTH, SACRUM_DEPTH, SACRUM_LENGTH = 50.0, 36.0, 80.0
# The spinal canal: from this far to this far behind the back of the lumbar bodies (mm).
CANAL_FROM, CANAL_TO = 3.0, 15.0
SACRUM_TILT_DEG = 35.0      # the sacrum leans posteriorly below the L5/S1 (or last lumbar) disc
# A disc inside the sacrum (variant sacral_disc): from this far below the sacrum's top, this high, and within
# these half-widths (L-R, A-P) of its axis; the sacrum keeps a rim around it, so it stays one piece.
SACRAL_DISC_AT, SACRAL_DISC_HEIGHT, SACRAL_DISC_HALF = 24.0, 6.0, (16.0, 11.0)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_THORACIC = tuple(LABELS[name] for name in ("T10", "T11", "T12"))
_LUMBAR = tuple(range(L1, L5 + 1))
REPEAT_T12 = -T12           # in a variant's vertebrae: a body coded repeat_label, labelled T12 like the one above


@dataclass(frozen=True)
class _Variant:
    """A phantom variant: its vertebrae top to bottom, what else is in view, and the findings it must give."""

    vertebrae: tuple[int, ...]
    disc_above_top: bool = False    # the field of view starts with the disc above the top vertebra (126)
    sacrum: bool = True             # False: the sacrum lies below the field of view
    sacral_disc: bool = False       # a disc inside the sacrum, merged into 124 by the segmenter
    pattern: str = "normal"
    lumbar_count: int | None = 5    # None: not assessable

    def expected_lstv(self) -> dict:
        return {"pattern": self.pattern, "count_assessable": self.lumbar_count is not None,
                "lumbar_count": self.lumbar_count}


_VARIANTS = {
    "normal": _Variant((*_THORACIC, *_LUMBAR)),
    "L6": _Variant((*_THORACIC, *_LUMBAR, L6), pattern="lumbarization", lumbar_count=6),
    "T13": _Variant((*_THORACIC, T13, *_LUMBAR), pattern="thoracolumbar_t13"),
    "four_lumbar": _Variant((*_THORACIC, *_LUMBAR[:-1]), pattern="four_lumbar", lumbar_count=4),
    "eleven_thoracic": _Variant((*_THORACIC[:-1], *_LUMBAR), pattern="eleven_thoracic"),
    "top_L1": _Variant(_LUMBAR, disc_above_top=True, pattern="not_assessable", lumbar_count=None),
    "top_L2": _Variant(_LUMBAR[1:], disc_above_top=True, pattern="not_assessable", lumbar_count=None),
    "no_sacrum": _Variant((*_THORACIC, *_LUMBAR), sacrum=False, pattern="not_assessable", lumbar_count=None),
    "sacral_disc": _Variant((*_THORACIC, *_LUMBAR), sacral_disc=True, pattern="irregular", lumbar_count=None),
    "duplicate_T12": _Variant((*_THORACIC, REPEAT_T12, *_LUMBAR), pattern="irregular", lumbar_count=None),
}
assert set(_VARIANTS) == set(VARIANTS)


@dataclass
class SynthStudy:
    study_id: int
    variant: str
    broken: str | None
    series: dict[str, int]  # series_description -> series_id


@dataclass
class SynthManifest:
    root: Path
    studies: list[SynthStudy]
    study_list: Path


@dataclass
class _Piece:
    """One structure of the phantom stack: an interval along the spine axis."""

    label: int
    cls: int
    height: float
    width: float
    depth: float
    level: str | None = None        # a disc's true level, where it is an RSNA level the label does not say


@dataclass
class _Geometry:
    """One sagittal series as stored in DICOM (after rounding to what the tags hold)."""

    rows: int
    cols: int
    pixel_spacing: tuple[float, float]        # (between rows, between columns)
    iop: tuple[float, ...]                    # 6 values, as written
    positions: list[tuple[float, ...]]        # IPP per slice, in ascending order along the normal
    instance_numbers: list[int]               # per slice, same order

    def affine_lps(self) -> np.ndarray:
        """Voxel (column, row, slice) -> LPS mm, computed as a converter computes it."""
        iop = np.asarray(self.iop, float)
        row_cos = iop[:3] / np.linalg.norm(iop[:3])
        col_cos = iop[3:] / np.linalg.norm(iop[3:])
        normal = np.cross(row_cos, col_cos)
        normal /= np.linalg.norm(normal)
        pos = np.asarray(self.positions, float)
        along = pos @ normal
        step = (along[-1] - along[0]) / (len(pos) - 1)
        m = np.eye(4)
        m[:3, 0] = row_cos * self.pixel_spacing[1]
        m[:3, 1] = col_cos * self.pixel_spacing[0]
        m[:3, 2] = normal * step
        m[:3, 3] = pos[0]
        return m

    def affine_ras(self) -> np.ndarray:
        return _LPS_TO_RAS @ self.affine_lps()


@dataclass
class _Phantom:
    """A spine in patient (LPS) space: a stack of pieces along axis d from point top."""

    top: np.ndarray
    d: np.ndarray          # unit, caudal along the spine
    p: np.ndarray          # unit, posterior, perpendicular to d
    l: np.ndarray          # unit, completes the frame (patient left-right)
    pieces: list[_Piece]
    sacrum: bool = True
    sacral_disc: bool = False
    sacrum_tilt: float = np.radians(SACRUM_TILT_DEG)
    bounds: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.bounds = np.concatenate([[0.0], np.cumsum([pc.height for pc in self.pieces])])

    @property
    def sacrum_top(self) -> float:
        return float(self.bounds[-1])

    def piece_center(self, piece: _Piece) -> np.ndarray:
        """LPS point on the spine axis at the middle of a piece of the stack."""
        i = next(n for n, pc in enumerate(self.pieces) if pc is piece)
        return self.top + self.d * 0.5 * (self.bounds[i] + self.bounds[i + 1])

    @property
    def canal_offset(self) -> float:
        """How far posterior of the spine axis the middle of the spinal canal lies (mm)."""
        return 0.5 * self.pieces[-1].depth + 0.5 * (CANAL_FROM + CANAL_TO)

    def canal_point(self, piece: _Piece) -> np.ndarray:
        """LPS point in the middle of the spinal canal at the level of a piece (a radiologist's canal point)."""
        return self.piece_center(piece) + self.p * self.canal_offset

    def classify(self, points_lps: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(class, label) at points given as three broadcastable LPS coordinate arrays."""
        x, y, z = points_lps
        rel = [x - self.top[0], y - self.top[1], z - self.top[2]]
        u = rel[0] * self.d[0] + rel[1] * self.d[1] + rel[2] * self.d[2]
        p = rel[0] * self.p[0] + rel[1] * self.p[1] + rel[2] * self.p[2]
        l = rel[0] * self.l[0] + rel[1] * self.l[1] + rel[2] * self.l[2]
        shape = np.broadcast_shapes(u.shape, p.shape, l.shape)
        u, p, l = (np.broadcast_to(a, shape) for a in (u, p, l))

        # Background: soft tissue in a slab around the spine, air outside it.
        cls = np.where(np.abs(p + 20.0) < 100.0, SOFT, AIR).astype(np.int8)
        depth_ref = self.pieces[-1].depth
        canal = ((u < self.sacrum_top) & (p > 0.5 * depth_ref + CANAL_FROM) & (p < 0.5 * depth_ref + CANAL_TO)
                 & (np.abs(l) < 8.0))
        cls[canal] = CANAL
        label = np.zeros(shape, dtype=np.uint8)

        # The stack: which piece's interval each point's u falls in, then its footprint.
        n = len(self.pieces)
        idx = np.searchsorted(self.bounds, u, side="right") - 1
        in_stack = (idx >= 0) & (idx < n)
        idx_c = np.clip(idx, 0, n - 1)
        half_w = np.array([pc.width / 2 for pc in self.pieces])[idx_c]
        half_d = np.array([pc.depth / 2 for pc in self.pieces])[idx_c]
        inside = in_stack & (_superellipse(l / half_w, p / half_d) <= 1.0)
        cls[inside] = np.array([pc.cls for pc in self.pieces], dtype=np.int8)[idx_c[inside]]
        label[inside] = np.array([pc.label for pc in self.pieces], dtype=np.uint8)[idx_c[inside]]

        if not self.sacrum:
            return cls, label
        # Sacrum: a wedge below the last disc, leaning posteriorly and narrowing.
        t = u - self.sacrum_top
        in_len = (t >= 0) & (t < SACRUM_LENGTH)
        half_ws = 0.5 * (SACRUM_WIDTH - 0.25 * np.clip(t, 0, None))
        pc_ = p - np.clip(t, 0, None) * np.tan(self.sacrum_tilt)
        sac = in_len & (_superellipse(l / half_ws, pc_ / (0.5 * SACRUM_DEPTH)) <= 1.0)
        cls[sac] = SACRUM
        label[sac] = SACRUM_LABEL
        if self.sacral_disc:
            band = (sac & (t >= SACRAL_DISC_AT) & (t < SACRAL_DISC_AT + SACRAL_DISC_HEIGHT)
                    & (np.abs(l) < SACRAL_DISC_HALF[0]) & (np.abs(pc_) < SACRAL_DISC_HALF[1]))
            cls[band] = DISC
            label[band] = self.pieces[-1].label  # SPINEPS gives it to the last body above: merged into 124
        return cls, label


def _superellipse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A rounded box: |a|^4 + |b|^4 (<= 1 inside)."""
    a2, b2 = a * a, b * b
    return a2 * a2 + b2 * b2


# ---------------------------------------------------------------- public API


def synth_dataset(root: Path, n_studies: int = 8, seed: int = 0, *, matrix: int = 256, broken: bool = True,
                  split: str = "train", variants: Sequence[str] | None = None,
                  progress: Callable[[int], None] | None = None) -> SynthManifest:
    """Write a synthetic RSNA-layout dataset under `root`; deterministic in `seed`.

    Variants cycle over the studies (sorted by id) in the order of `variants`
    (default VARIANTS: normal, L6, T13, four_lumbar, top_L2, eleven_thoracic,
    sacral_disc, top_L1, no_sacrum, duplicate_T12).
    With `broken` and at least 4 studies, the last three studies are broken:
    no_t2 (no Sagittal T2/STIR series at all), truncated (one T2 slice file cut
    to half its bytes), missing_folder (listed everywhere, no image folder).
    A broken study keeps the variant its phantom was drawn from, but gets no
    ground truth. `matrix` is the in-plane size of the sagittal series (>= 64;
    the field of view stays ~290 mm, so the pixel size is ~290/matrix mm).
    """
    root = Path(root)
    if n_studies < 1:
        raise ValueError("n_studies must be at least 1")
    cycle = tuple(variants) if variants else VARIANTS
    for v in cycle:
        _variant(v)
    if matrix < 64:
        # Below 64 the pixel (~290 mm / matrix) outgrows the 6 mm thoracic discs, which then
        # break into pieces or vanish: the phantom would no longer encode its own labels.
        raise ValueError("matrix must be at least 64")
    images = root / f"{split}_images"
    if images.exists() and any(images.iterdir()):
        raise FileExistsError(f"{images} already holds studies; synthesize into an empty folder")
    images.mkdir(parents=True, exist_ok=True)
    (root / "ground_truth").mkdir(exist_ok=True)

    rng = np.random.default_rng([seed, 0x5EED])
    study_ids = sorted(_unique_ints(rng, n_studies, 10_000_000, 4_294_967_295))
    series_ids = _unique_ints(rng, 3 * n_studies, 2**31 + 1, 9_999_999_999)
    kinds: list[str | None] = [None] * n_studies
    if broken and n_studies >= 4:
        kinds[-len(BROKEN_KINDS):] = list(BROKEN_KINDS)
    # One good study's level annotations are shifted one level (when two or more studies are good): the first
    # L6 study, whose annotators counted five lumbar levels up from the sacrum (shift +1), else the last good
    # study, marked one level lower than its anatomy (shift -1).
    good = [n for n, k in enumerate(kinds) if k is None]
    l6 = [n for n in good if cycle[n % len(cycle)] == "L6"]
    shifted, shift = (l6[0], 1) if l6 else (good[-1], -1)
    if len(good) < 2:
        shifted = None

    studies: list[SynthStudy] = []
    manifest_studies: dict[str, dict] = {}
    coord_rows: list[list] = []
    for n, sid in enumerate(study_ids):
        variant = cycle[n % len(cycle)]
        kind = kinds[n]
        series = {SAG_T1: series_ids[3 * n], SAG_T2: series_ids[3 * n + 1], AX_T2: series_ids[3 * n + 2]}
        if kind == "no_t2":
            del series[SAG_T2]
        srng = np.random.default_rng([seed, n, sid % 2**32])
        entry, coords = _write_study(root, images, sid, series, variant, kind, matrix, srng,
                                     shift=shift if n == shifted else 0)
        manifest_studies[str(sid)] = entry
        coord_rows += coords
        studies.append(SynthStudy(sid, variant, kind, dict(series)))
        if progress is not None:
            progress(n + 1)

    _write_csvs(root, split, studies, coord_rows, rng)
    study_list = root / "study_ids.txt"
    study_list.write_text("".join(f"{s.study_id}\n" for s in studies))
    manifest = {
        "generator": "batchseg.synth",
        "seed": seed,
        "matrix": matrix,
        "split": split,
        "conventions": {
            "field_of_view_top": "T10 (the topmost structure; nothing above it); top_L1/top_L2: the disc above "
                                 "L1/L2 (label 126), nothing above it",
            "variants": {name: {"vertebrae": [VERTEBRA_NAMES[abs(v)] + (" (labelled like the one above)"
                                                                        if v < 0 else "") for v in spec.vertebrae],
                                "disc_above_top": spec.disc_above_top, "sacrum_in_view": spec.sacrum,
                                "disc_inside_sacrum": spec.sacral_disc, "expected_lstv": spec.expected_lstv()}
                         for name, spec in _VARIANTS.items()},
            "intensity_code_t2": INTENSITY_T2,
            "noise": {"sigma": NOISE_SIGMA, "clip": NOISE_CLIP},
            "tier_half_width": TIER_HALF_WIDTH,
            "labels": "SPINEPS/TPTBox: T10-T12 17-19, T13 28, L1-L6 20-25, sacrum 26, disc below X 100+X, "
                      "126 the disc above the top vertebra; a disc inside the sacrum is merged into 124",
            "grid": "ground truth uses the Sagittal T2/STIR grid: axes (column, row, slice), RAS affine",
            "level_annotations": "{split}_label_coordinates.csv: 'Spinal Canal Stenosis' points, pixel (x = column, "
                                 "y = row) of the Sagittal T2/STIR mid-sagittal instance, in the middle of the spinal "
                                 "canal at each disc whose true level is one of L1/L2 ... L5/S1; 'anatomical': named "
                                 "as the anatomy is; 'shifted +1': every disc marked one level above its own, as "
                                 "annotators counting five lumbar levels up from the sacrum of an L6 spine would (the "
                                 "first L6 study), 'shifted -1': one level below (the last good study when there is no "
                                 "L6 study); one study is shifted when two or more are good",
        },
        "studies": manifest_studies,
    }
    write_json(root / "ground_truth" / "manifest.json", manifest)
    return SynthManifest(root, studies, study_list)


def read_manifest(root: Path) -> dict:
    """The ground-truth manifest of a synthesized dataset."""
    return json.loads((Path(root) / "ground_truth" / "manifest.json").read_text())


def variant_labels(variant: str) -> dict[int, str]:
    """The instance labels a phantom of this variant holds, with the names its sequence gives them."""
    spec = _variant(variant)
    order = [(pc.label, label_kind(pc.label)) for pc in _stack(variant, np.random.default_rng(0))]
    if spec.sacrum:
        order.append((SACRUM_LABEL, "sacrum"))
    _, names = name_structures(order, [v for v, _ in order])
    return names


def expected_lstv(variant: str) -> dict:
    """What the LSTV findings of a phantom of this variant must say: pattern, count_assessable, lumbar_count."""
    return _variant(variant).expected_lstv()


# ---------------------------------------------------------------- one study


def _variant(variant: str) -> _Variant:
    if variant not in _VARIANTS:
        raise ValueError(f"unknown phantom variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return _VARIANTS[variant]


def _stack(variant: str, rng: np.random.Generator) -> list[_Piece]:
    spec = _variant(variant)
    pieces = []
    if spec.disc_above_top:
        # The field of view cuts through the spine above the top vertebra: its disc is the top structure.
        top = spec.vertebrae[0]
        level = f"{VERTEBRA_NAMES[top - 1]}/{VERTEBRA_NAMES[top]}"   # what a radiologist calls it
        _, w, dp = LUMBAR_BODY if top in _LUMBAR else THORACIC_BODY
        pieces.append(_Piece(DISC_ABOVE_TOP, DISC, LUMBAR_DISC + rng.uniform(-0.3, 0.3), w, dp, level))
    for v in spec.vertebrae:
        label = T12 if v == REPEAT_T12 else v
        if v in _LUMBAR or v == L6:
            (h, w, dp), cls, disc = LUMBAR_BODY, LUMBAR, LUMBAR_DISC
        else:
            (h, w, dp), cls, disc = THORACIC_BODY, (REPEAT if v == REPEAT_T12 else THORACIC), THORACIC_DISC
        pieces.append(_Piece(label, cls, h + rng.uniform(-0.5, 0.5), w, dp))
        pieces.append(_Piece(DISC_OFFSET + label, DISC, disc + rng.uniform(-0.3, 0.3), w, dp))
    return pieces


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sagittal_geometry(matrix: int, rng: np.random.Generator) -> _Geometry:
    """A realistic oblique-sagittal series geometry (values rounded as the DICOM tags hold them)."""
    n_slices = int(rng.integers(15, 21))
    step = round(float(rng.uniform(3.3, 4.5)), 3)
    fov = float(rng.uniform(288.0, 300.0))
    ps = round(fov / matrix, 6)
    rot = _rotation(np.radians(rng.uniform(-2, 2)), np.radians(rng.uniform(-3, 3)), np.radians(rng.uniform(-5, 5)))
    row_cos = np.round(rot @ np.array([0.0, 1.0, 0.0]), 6)   # columns run anterior -> posterior
    col_cos = np.round(rot @ np.array([0.0, 0.0, -1.0]), 6)  # rows run superior -> inferior
    rc, cc = row_cos / np.linalg.norm(row_cos), col_cos / np.linalg.norm(col_cos)
    normal = np.cross(rc, cc)
    normal /= np.linalg.norm(normal)
    center = np.array([rng.uniform(-8, 8), rng.uniform(-30, 10), rng.uniform(-60, 60)])
    first = center - rc * ps * (matrix - 1) / 2 - cc * ps * (matrix - 1) / 2 - normal * step * (n_slices - 1) / 2
    positions = [tuple(round(float(v), 5) for v in first + normal * step * k) for k in range(n_slices)]
    # Instance numbers run either way along the normal, as in RSNA; files are named by them.
    inst = list(range(1, n_slices + 1))
    if rng.random() < 0.5:
        inst.reverse()
    geo = _Geometry(matrix, matrix, (ps, ps), tuple(float(v) for v in (*row_cos, *col_cos)), positions, inst)
    return geo


def _phantom(variant: str, geo: _Geometry, rng: np.random.Generator) -> _Phantom:
    spec = _variant(variant)
    a = geo.affine_lps()
    row_cos = a[:3, 0] / np.linalg.norm(a[:3, 0])   # posterior-ish
    col_cos = a[:3, 1] / np.linalg.norm(a[:3, 1])   # caudal-ish
    normal = a[:3, 2] / np.linalg.norm(a[:3, 2])
    tilt = np.radians(rng.uniform(-8, 8))           # the spine leans within the sagittal plane
    d = np.cos(tilt) * col_cos + np.sin(tilt) * row_cos
    p = -np.sin(tilt) * col_cos + np.cos(tilt) * row_cos
    n = len(geo.positions)
    margin = rng.uniform(6.0, 9.0)
    # Top edge centre of the image, in the middle slice; then down by the margin.
    top_mid = a[:3, 3] + a[:3, 0] * (geo.cols - 1) / 2 + a[:3, 2] * (n - 1) / 2
    # The body sits a little anterior of the image centre: the spine leans and the sacrum tilts backwards.
    top = top_mid + col_cos * margin + row_cos * rng.uniform(-22, -12) + normal * rng.uniform(-2, 2)
    pieces = _stack(variant, rng)
    # Keep the whole top structure below the edge whatever the lean: its corners rise by depth/2 * sin(tilt).
    top = top + col_cos * (0.5 * pieces[0].depth * abs(np.sin(tilt)))
    return _Phantom(top, d, p, np.cross(d, p), pieces, sacrum=spec.sacrum, sacral_disc=spec.sacral_disc)


def _voxel_points(affine_lps: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable LPS coordinates of every voxel centre of a (i, j, k) grid."""
    i = np.arange(shape[0], dtype=float)[:, None, None]
    j = np.arange(shape[1], dtype=float)[None, :, None]
    k = np.arange(shape[2], dtype=float)[None, None, :]
    return tuple(affine_lps[r, 0] * i + affine_lps[r, 1] * j + affine_lps[r, 2] * k + affine_lps[r, 3]
                 for r in range(3))


def _render(cls: np.ndarray, code: dict[str, int], rng: np.random.Generator, dtype: np.dtype) -> np.ndarray:
    lut = np.array([code[name] for name in CLASS_NAMES], dtype=np.float32)
    noise = np.clip(rng.standard_normal(cls.shape, dtype=np.float32) * NOISE_SIGMA, -NOISE_CLIP, NOISE_CLIP)
    img = np.rint(lut[cls] + noise)
    return np.clip(img, 0, None).astype(dtype)


def _write_study(root: Path, images: Path, sid: int, series: dict[str, int], variant: str, kind: str | None,
                 matrix: int, rng: np.random.Generator, shift: int = 0) -> tuple[dict, list[list]]:
    geo = _sagittal_geometry(matrix, rng)
    ph = _phantom(variant, geo, rng)
    shape = (geo.cols, geo.rows, len(geo.positions))
    cls, label = ph.classify(_voxel_points(geo.affine_lps(), shape))
    dtype = np.dtype(np.uint16 if sid % 2 == 0 else np.int16)

    expected = variant_labels(variant)
    found = set(int(v) for v in np.unique(label)) - {0}
    if found != set(expected):
        # The stack is sized to fit the field of view; this guards the sizing.
        raise AssertionError(f"phantom {variant} of study {sid} shows labels {sorted(found)}, "
                             f"expected {sorted(expected)}")

    entry = {"variant": variant, "broken": kind, "series": {k: v for k, v in series.items()},
             "expected_labels": {}, "expected_lstv": None, "ground_truth": None}
    coords: list[list] = []
    if kind != "missing_folder":
        study_dir = images / str(sid)
        t1 = _render(cls, INTENSITY_T1, rng, dtype)
        _write_series(study_dir / str(series[SAG_T1]), t1, geo, sid, series[SAG_T1], "T1", 1)
        if SAG_T2 in series:
            t2 = _render(cls, INTENSITY_T2, rng, dtype)
            files = _write_series(study_dir / str(series[SAG_T2]), t2, geo, sid, series[SAG_T2], "T2", 2)
            if kind == "truncated":
                victim = files[len(files) // 2]
                data = victim.read_bytes()
                victim.write_bytes(data[: len(data) // 2])
        _write_axial(study_dir / str(series[AX_T2]), ph, geo, sid, series[AX_T2], dtype, rng)
    if kind is None:
        gt = root / "ground_truth" / f"{sid}_seg-vert_msk.nii.gz"
        img = nib.Nifti1Image(label, geo.affine_ras())
        img.set_sform(geo.affine_ras(), code=1)
        img.set_qform(geo.affine_ras(), code=1)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, gt)
        entry["expected_labels"] = {str(k): v for k, v in expected.items()}
        entry["expected_lstv"] = expected_lstv(variant)
        entry["ground_truth"] = str(gt.relative_to(root))
    if SAG_T2 in series:
        coords = _label_coordinates(sid, series[SAG_T2], ph, geo, shift=shift)
    # What the level check must find for this study: SPINEPS's level minus the annotated one is `shift`.
    entry["level_annotations"] = None if not coords else f"shifted {shift:+d}" if shift else "anatomical"
    if kind is None:
        entry["expected_levels"] = {"verdict": "not_available" if not coords else "shifted" if shift else "agree",
                                    "shift": shift if coords and shift else None}
    return entry, coords


def _write_series(folder: Path, vol: np.ndarray, geo: _Geometry, sid: int, series_id: int, desc_tag: str,
                  series_number: int) -> list[Path]:
    """Write a (column, row, slice) volume as one file per slice; return the paths in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (pos, inst) in enumerate(zip(geo.positions, geo.instance_numbers)):
        pixels = np.ascontiguousarray(vol[:, :, k].T)  # DICOM stores rows x columns
        ds = _dataset(sid, series_id, inst, desc_tag, series_number, pixels, geo.iop, pos, geo.pixel_spacing,
                      _slice_step(geo))
        path = folder / f"{inst}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_step(geo: _Geometry) -> float:
    return float(np.linalg.norm(geo.affine_lps()[:3, 2]))


def _write_axial(folder: Path, ph: _Phantom, sag: _Geometry, sid: int, series_id: int, dtype: np.dtype,
                 rng: np.random.Generator) -> None:
    """A few small axial slices through the lowest discs: present for the layout, never segmented."""
    n = max(32, sag.rows // 2)
    ps = round(180.0 / n, 6)
    discs = [pc for pc in ph.pieces if pc.cls == DISC][-3:]
    iop = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    positions = []
    for disc in discs:
        c = ph.piece_center(disc)
        positions.append(tuple(round(float(v), 5) for v in (c[0] - ps * (n - 1) / 2, c[1] - ps * (n - 1) / 2, c[2])))
    positions.sort(key=lambda q: q[2])
    geo = _Geometry(n, n, (ps, ps), iop, positions, list(range(1, len(positions) + 1)))
    a = geo.affine_lps()
    folder.mkdir(parents=True, exist_ok=True)
    for k, (pos, inst) in enumerate(zip(geo.positions, geo.instance_numbers)):
        # Each axial slice is its own plane (the discs are not evenly spaced): evaluate it alone.
        sl = np.eye(4)
        sl[:3, :2] = a[:3, :2]
        sl[:3, 3] = pos
        cls, _ = ph.classify(_voxel_points(sl, (n, n, 1)))
        pixels = np.ascontiguousarray(_render(cls, INTENSITY_T2, rng, dtype)[:, :, 0].T)
        ds = _dataset(sid, series_id, inst, "T2", 3, pixels, iop, pos, (ps, ps), 4.0)
        ds.save_as(folder / f"{inst}.dcm", enforce_file_format=True)


def _ds_str(v: float) -> str:
    """A decimal string that fits a DICOM DS (16 characters)."""
    s = f"{v:.6f}".rstrip("0").rstrip(".")
    return s if s not in ("-0", "") else "0"


def _dataset(sid: int, series_id: int, inst: int, desc_tag: str, series_number: int, pixels: np.ndarray,
             iop, ipp, spacing, step: float) -> Dataset:
    sop_uid = f"{series_id}.{inst}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    # RSNA's de-identification puts the ids into the UIDs and empties most else.
    ds.StudyInstanceUID = str(sid)
    ds.SeriesInstanceUID = str(series_id)
    ds.FrameOfReferenceUID = f"{sid}.1"
    ds.PatientID = str(sid)
    ds.PatientName = str(sid)
    ds.Modality = "MR"
    ds.BodyPartExamined = "LSPINE"
    ds.SeriesDescription = desc_tag
    ds.SeriesNumber = series_number
    ds.InstanceNumber = inst
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [_ds_str(v) for v in iop]
    ds.ImagePositionPatient = [_ds_str(v) for v in ipp]
    ds.PixelSpacing = [_ds_str(v) for v in spacing]
    ds.SliceThickness = _ds_str(round(step * 0.9, 3))
    ds.SpacingBetweenSlices = _ds_str(step)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    return ds


def _true_disc_levels(ph: _Phantom) -> list[tuple[_Piece, str]]:
    """Each disc of the phantom with its true level: the vertebrae above and below it in the stack (S1 below
    the last, in view or not), or the level the piece states (the disc above the top vertebra)."""
    out = []
    for n, pc in enumerate(ph.pieces):
        if pc.cls != DISC:
            continue
        below = next((VERTEBRA_NAMES[q.label] for q in ph.pieces[n + 1:] if q.cls != DISC), "S1")
        out.append((pc, pc.level or f"{VERTEBRA_NAMES[pc.label - DISC_OFFSET]}/{below}"))
    return out


def _label_coordinates(sid: int, series_id: int, ph: _Phantom, geo: _Geometry, *, shift: int = 0) -> list[list]:
    """RSNA's 'Spinal Canal Stenosis' rows: the canal point of every disc whose true level is one of the five,
    as pixel (x = column, y = row) of the mid-sagittal instance; the annotators count as the anatomy is (an
    L6 spine has no L5/S1 to mark). With `shift`, every disc is marked `shift` levels above its own (counted
    in discs from L1/L2): +1 on an L6 spine marks L6/S1 "L5/S1", as annotators counting five lumbar levels up
    from the sacrum would; -1 marks L4/L5 "L5/S1" (SPINEPS L4/L5 where they marked L5/S1)."""
    inv = np.linalg.inv(geo.affine_lps())
    mid = len(geo.positions) // 2
    rsna = [disc_name(v) for v in _LUMBAR]
    discs = _true_disc_levels(ph)
    first = next((n for n, (_, level) in enumerate(discs) if level in rsna), None)
    if first is None:
        return []
    rows = []
    for n, (pc, level) in enumerate(discs):
        if shift:
            index = rsna.index(discs[first][1]) + (n - first) - shift
            level = rsna[index] if 0 <= index < len(rsna) else ""
        if level not in rsna:
            continue
        i, j, _ = (inv @ np.append(ph.canal_point(pc), 1.0))[:3]
        rows.append([sid, series_id, geo.instance_numbers[mid], CANAL_CONDITION, level,
                     round(float(i), 2), round(float(j), 2)])
    return rows


def _write_csvs(root: Path, split: str, studies: list[SynthStudy], coord_rows: list[list],
                rng: np.random.Generator) -> None:
    with open(root / f"{split}_series_descriptions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_id", "series_id", "series_description"])
        for s in studies:
            for desc, ser in s.series.items():
                w.writerow([s.study_id, ser, desc])
    levels = ["l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1"]
    grades = ["Normal/Mild", "Moderate", "Severe"]
    with open(root / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_id", *[f"spinal_canal_stenosis_{lv}" for lv in levels]])
        for s in studies:
            w.writerow([s.study_id, *rng.choice(grades, size=len(levels), p=[0.8, 0.15, 0.05])])
    with open(root / f"{split}_label_coordinates.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_id", "series_id", "instance_number", "condition", "level", "x", "y"])
        w.writerows(coord_rows)


def _unique_ints(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < n:
        v = int(rng.integers(lo, hi))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


__all__ = ["SynthStudy", "SynthManifest", "synth_dataset", "read_manifest", "variant_labels", "INTENSITY_T2",
           "NOISE_CLIP", "TIER_HALF_WIDTH", "VARIANTS", "BROKEN_KINDS"]
