"""The spine as an ordered sequence: vertebrae, sacrum and discs top to bottom, named from their neighbours.

A label map is a set of numbers; the anatomy is an order. `build_sequence` puts
every vertebra, sacrum and disc of a measured label map in order along the
spine and names each disc after the structures really above and below it
(118 between T11 and L1 is "T11/L1", a disc with nothing above it is "above L2").
LSTV findings (lstv.py), the QC picture and any check of levels against other
annotations read this sequence, not the label numbers.

Points and frames:
* An entry's point is the vertebral-BODY centroid (the label restricted to the
  body classes of the semantic mask, as SPINEPS's ctd) when a semantic mask gave
  one, else the centre of mass of the whole label (or of its piece, for a label
  in several pieces). `centroid_voxel` is in voxel indices (i, j, k) of the NIfTI
  grid, `centroid_world` in RAS+ millimetres through the affine.
* The order is the projection on the spine's main axis: the first principal
  axis of the vertebra and sacrum points (all points when fewer than two), in
  RAS+, pointing caudally. `position_mm` is the distance along it from the top
  entry. World -z stands in when there are fewer than two points.
* `axis_world` of an entry is the spine's LOCAL long axis there (unit, RAS+,
  caudal): from the vertebral point above to the one below (one-sided at the
  ends); for a disc, from the vertebra above it to the one below it. The
  sacrum's point (its whole label: no body class) is no lower end for the
  structures directly above it: its centre of mass lies far below and behind
  the top of S1, so the structure's own point stands in.

A label in several pieces (26-connected components) gives one entry per piece
that is structure-sized (PIECE_FRACTION of the study's median for its kind);
smaller pieces are fragments and make no entry. So a duplicated T12 appears
twice in the sequence, and a disc inside the sacrum merged into 124 appears
as a second 124.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .labels import (DISC_ABOVE_TOP, DISC_OFFSET, ENDPLATE_OFFSET, SACRUM, VERTEBRA_NAMES, endplate_name,
                     label_kind, label_name)

if TYPE_CHECKING:
    from .structures import Structure

# A piece of a split label is a structure of its own when it holds at least this share of the study's
# median structure of its kind (vertebra or disc); smaller pieces are fragments.
PIECE_FRACTION = 0.25
SEQUENCE_KINDS = ("vertebra", "sacrum", "disc")
_CAUDAL = np.array([0.0, 0.0, -1.0])    # RAS+: -z is inferior


@dataclass(frozen=True)
class SequenceEntry:
    label: int                                   # seg-vert label
    kind: str                                    # vertebra | sacrum | disc
    name: str                                    # from the neighbours in the sequence
    piece: int | None                            # index into the label's pieces (largest first); None: whole label
    point: str                                   # "body" (vertebral-body centroid) | "whole" (whole label or piece)
    centroid_voxel: tuple[float, float, float]   # voxel indices (i, j, k)
    centroid_world: tuple[float, float, float]   # RAS+ mm
    volume_voxels: int                           # of the label, or of the piece
    position_mm: float                           # along the main axis, from the top entry
    axis_world: tuple[float, float, float]       # local long axis, unit vector, RAS+, caudal


@dataclass
class SpineSequence:
    entries: list[SequenceEntry]                 # top to bottom
    axis_world: tuple[float, float, float]       # main axis, unit vector, RAS+, caudal
    labels_anatomical: bool
    label_names: dict[int, str] = field(default_factory=dict)   # every label of the map -> its name

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def vertebral(self) -> list[SequenceEntry]:
        """Vertebrae and sacrum, top to bottom (discs left out)."""
        return [e for e in self.entries if e.kind != "disc"]

    def neighbours(self, i: int) -> tuple[SequenceEntry | None, SequenceEntry | None]:
        """The vertebral entries directly above and below entry i."""
        above = next((e for e in reversed(self.entries[:i]) if e.kind != "disc"), None)
        below = next((e for e in self.entries[i + 1:] if e.kind != "disc"), None)
        return above, below

    def to_json(self) -> list[dict]:
        return [{**asdict(e), "centroid_voxel": list(e.centroid_voxel), "centroid_world": list(e.centroid_world),
                 "axis_world": list(e.axis_world)} for e in self.entries]


def build_sequence(structures: Sequence[Structure], labels_anatomical: bool = True) -> SpineSequence:
    """The ordered, named sequence of a measured label map (measures.measure calls this)."""
    medians = kind_medians(structures)
    points: list[tuple[int, str, int | None, str, tuple, tuple, int]] = []
    for s in structures:
        if s.kind not in SEQUENCE_KINDS:
            continue
        if s.components <= 1 or not s.pieces:
            body = s.body_centroid_voxel is not None
            points.append((s.instance_id, s.kind, None, "body" if body else "whole",
                           s.body_centroid_voxel if body else s.centroid_voxel,
                           s.body_centroid_world if body else s.centroid_world, s.volume_voxels))
            continue
        ref = medians.get("disc" if s.kind == "disc" else "vertebra") or s.pieces[0].volume_voxels
        for n, p in enumerate(s.pieces):
            if n > 0 and p.volume_voxels < PIECE_FRACTION * ref:
                continue
            body = p.body_centroid_voxel is not None
            points.append((s.instance_id, s.kind, n, "body" if body else "whole",
                           p.body_centroid_voxel if body else p.centroid_voxel,
                           p.body_centroid_world if body else p.centroid_world, p.volume_voxels))

    world = np.array([p[5] for p in points], dtype=float).reshape(-1, 3)
    vert_rows = [n for n, p in enumerate(points) if p[1] != "disc"]
    axis = main_axis(world[vert_rows] if len(vert_rows) >= 2 else world)
    proj = world @ axis
    order = sorted(range(len(points)), key=lambda n: (proj[n], points[n][0]))
    top = float(proj[order[0]]) if order else 0.0
    ordered = [points[n] for n in order]
    names, label_names = name_structures([(p[0], p[1]) for p in ordered], [s.instance_id for s in structures],
                                         labels_anatomical)
    local = _local_axes(ordered, world[order], axis)
    entries = [SequenceEntry(label=p[0], kind=p[1], name=name, piece=p[2], point=p[3],
                             centroid_voxel=tuple(float(x) for x in p[4]),
                             centroid_world=tuple(float(x) for x in p[5]), volume_voxels=int(p[6]),
                             position_mm=float(proj[n] - top), axis_world=tuple(float(x) for x in ax))
               for p, name, n, ax in zip(ordered, names, order, local)]
    return SpineSequence(entries, tuple(float(x) for x in axis), labels_anatomical, label_names)


def kind_medians(structures: Sequence[Structure]) -> dict[str, float]:
    """Median volume (voxels) of the main piece of the study's vertebrae (sacrum apart) and of its discs."""
    out = {}
    for kind in ("vertebra", "disc"):
        vols = [s.pieces[0].volume_voxels if s.pieces else s.volume_voxels for s in structures if s.kind == kind]
        if vols:
            out[kind] = float(np.median(vols))
    return out


def main_axis(points: np.ndarray) -> np.ndarray:
    """First principal axis of the points (RAS+ mm), unit, pointing caudally; world -z when undefined."""
    if len(points) < 2:
        return _CAUDAL.copy()
    centred = points - points.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    if sv[0] <= 1e-9:
        return _CAUDAL.copy()
    return _caudal(vt[0])


def _caudal(v: np.ndarray) -> np.ndarray:
    v = v / np.linalg.norm(v)
    if abs(v[2]) > 1e-9:
        return v if v[2] < 0 else -v
    # A spine lying exactly in a horizontal plane: keep any consistent sign.
    k = int(np.argmax(np.abs(v)))
    return v if v[k] > 0 else -v


def _local_axes(ordered: list[tuple], world: np.ndarray, axis: np.ndarray) -> list[np.ndarray]:
    vert = [n for n, p in enumerate(ordered) if p[1] != "disc"]
    out: list[np.ndarray] = []
    for n, p in enumerate(ordered):
        if len(vert) < 2:
            out.append(axis)
            continue
        if p[1] != "disc":
            k = vert.index(n)
            a, b = vert[max(k - 1, 0)], vert[min(k + 1, len(vert) - 1)]
        else:
            above = [v for v in vert if v < n]
            below = [v for v in vert if v > n]
            a = above[-1] if above else below[0]
            b = below[0] if below else above[-1]
            if a == b:   # only one side: that vertebra's own local axis
                k = vert.index(a)
                a, b = vert[max(k - 1, 0)], vert[min(k + 1, len(vert) - 1)]
        if b > n and a < n and _whole_sacrum(ordered[b]):
            # The whole sacrum's centre of mass lies far below and behind the top of S1 (tilted ~20 degrees
            # from the spine above): the structure itself is the better lower end.
            b = n
        d = world[b] - world[a]
        norm = np.linalg.norm(d)
        out.append(d / norm if norm > 1e-9 else axis)
    return out


def _whole_sacrum(point: tuple) -> bool:
    return point[1] == "sacrum" and point[3] == "whole"


def name_structures(ordered: Sequence[tuple[int, str]], present: Iterable[int],
                    labels_anatomical: bool = True) -> tuple[list[str], dict[int, str]]:
    """(a name per entry of `ordered`, a name per label of `present`).

    `ordered` is (label, kind) top to bottom, vertebrae, sacrum and discs. A disc is
    named after the vertebral entries directly above and below it; a label with
    several entries takes its topmost entry's name; endplate 200+X is named after
    disc 100+X. Without anatomical labels vertebrae are only "#n from top" (their
    label order, as SPINEPS numbers them without its labeling model).
    """
    present = sorted({int(v) for v in present} | {int(v) for v, _ in ordered})
    rank = {v: n + 1 for n, v in enumerate(sorted(v for v in present if label_kind(v) == "vertebra"))}
    vertebral = [n for n, (_, kind) in enumerate(ordered) if kind != "disc"]

    def vertebral_name(label: int, kind: str) -> str:
        if labels_anatomical:
            return VERTEBRA_NAMES[label]
        return "sacrum" if kind == "sacrum" else f"unlabelled vertebra #{rank[label]} from top"

    names: list[str] = []
    for n, (label, kind) in enumerate(ordered):
        if kind != "disc":
            names.append(vertebral_name(label, kind))
            continue
        if not labels_anatomical:
            names.append(_unlabelled_disc(label, rank))
            continue
        above = [vertebral_name(*ordered[v]) for v in vertebral if v < n]
        below = [vertebral_name(*ordered[v]) for v in vertebral if v > n]
        if above and below:
            names.append(f"{above[-1]}/{below[0]}")
        elif below:
            names.append(f"above {below[0]}")
        elif above:
            names.append(f"below {above[-1]}")
        else:
            names.append(label_name(label))

    by_label: dict[int, str] = {}
    for (label, _), name in zip(ordered, names):
        by_label.setdefault(label, name)       # topmost entry wins
    out = {}
    for v in present:
        kind = label_kind(v)
        if v in by_label:
            out[v] = by_label[v]
        elif kind == "endplate":
            out[v] = _endplate(v - ENDPLATE_OFFSET, by_label, rank, labels_anatomical)
        elif kind in SEQUENCE_KINDS:           # not in `ordered`: named by the table
            out[v] = label_name(v) if labels_anatomical else _unlabelled_disc(v, rank)
        else:
            out[v] = f"label {v}" if labels_anatomical else f"unlabelled {kind} (label {v})"
    return names, out


def _unlabelled_disc(label: int, rank: dict[int, int]) -> str:
    if label == DISC_ABOVE_TOP:
        return label_name(label)
    if label - DISC_OFFSET in rank:
        return f"unlabelled disc below vertebra #{rank[label - DISC_OFFSET]}"
    return f"unlabelled disc (label {label})"


def _endplate(x: int, discs: dict[int, str], rank: dict[int, int], labels_anatomical: bool) -> str:
    if x == SACRUM:
        return endplate_name(x)
    if not labels_anatomical:
        if x in rank:
            return f"unlabelled endplates at the disc below vertebra #{rank[x]}"
        return f"unlabelled endplate (label {ENDPLATE_OFFSET + x})"
    disc = discs.get(DISC_OFFSET + x)
    return endplate_name(x, disc) if disc else f"endplates at disc {DISC_OFFSET + x} (not in the mask)"
