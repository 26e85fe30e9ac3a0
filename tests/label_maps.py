"""Hand-made SPINEPS-style label maps: a spine given top to bottom as a list of labels.

Boxes stacked along k (k = 0 is the top: the affine maps +k to world -z, inferior), vertebra bodies 8 voxels
high, discs 3, the sacrum 16, each touching the next as in a real mask. A voxel is 1 x 1 x 2 mm.
"""
from __future__ import annotations

import numpy as np

from batchseg.labels import SACRUM, label_kind

# i: anterior -> posterior, j: right -> left, k: superior -> inferior (a PIR-like sagittal grid), RAS+ mm.
AFFINE = np.array([[0.0, -1.0, 0.0, 6.0],
                   [-1.0, 0.0, 0.0, 10.0],
                   [0.0, 0.0, -2.0, 80.0],
                   [0.0, 0.0, 0.0, 1.0]])
HEIGHTS = {"vertebra": 8, "disc": 3, "sacrum": 16, "endplate": 1}
WIDTH = 12              # along j
SACRAL_DISC_DEPTH = 6   # rows below the sacrum's top where a disc inside it starts


def spine_map(top_to_bottom: list[int], *, sacral_disc: int | None = None) -> np.ndarray:
    """The label map; `sacral_disc`: a disc band with this label inside the sacrum (SPINEPS merges it into 124)."""
    k = sum(HEIGHTS[_kind(v)] for v in top_to_bottom)
    m = np.zeros((20, WIDTH, k + 4), dtype=np.int16)
    z = 2
    for v in top_to_bottom:
        h = HEIGHTS[_kind(v)]
        if _kind(v) == "disc":
            m[4:16, 2:WIDTH - 2, z:z + h] = v
        else:
            m[3:17, 2:WIDTH - 2, z:z + h] = v
        if v == SACRUM and sacral_disc is not None:
            # Inside the sacrum, surrounded by it: the sacrum stays one piece around the band.
            m[5:15, 3:WIDTH - 3, z + SACRAL_DISC_DEPTH:z + SACRAL_DISC_DEPTH + 3] = sacral_disc
        z += h
    return m


def _kind(v: int) -> str:
    kind = label_kind(v)
    return "vertebra" if kind == "vertebra" else kind


def stack(*names: str) -> list[int]:
    """Labels of a spine given by names top to bottom with the discs between them added as SPINEPS numbers them.

    "T10", "T11", ... are vertebrae; each vertebra but the last gets the disc 100+X below it, and a leading "126"
    puts SPINEPS's disc above the top vertebra first.
    """
    from batchseg.labels import LABELS

    out: list[int] = []
    for n, name in enumerate(names):
        if name == "126":
            out.append(126)
            continue
        v = LABELS[name]
        out.append(v)
        if n < len(names) - 1 and v != SACRUM:
            out.append(100 + v)
    return out
