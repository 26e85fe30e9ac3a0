"""components.py: connected components on runs agree with a slow flood fill, in either memory order."""
from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest

from batchseg.components import label_components, voxel_components


def _flood_fill(classes: np.ndarray, connectivity: int) -> np.ndarray:
    """Slow, obviously right labelling for comparison."""
    steps = [d for d in itertools.product((-1, 0, 1), repeat=3) if any(d)]
    if connectivity == 6:
        steps = [d for d in steps if sum(map(abs, d)) == 1]
    out = np.zeros(classes.shape, np.int32)
    n = 0
    for start in map(tuple, np.argwhere(classes > 0)):
        if out[start]:
            continue
        n += 1
        out[start] = n
        todo = deque([start])
        while todo:
            p = todo.popleft()
            for d in steps:
                q = tuple(a + b for a, b in zip(p, d))
                if all(0 <= q[ax] < classes.shape[ax] for ax in range(3)) and not out[q] \
                        and classes[q] == classes[p]:
                    out[q] = n
                    todo.append(q)
    return out


def _same_partition(got: np.ndarray, ref: np.ndarray, fg: np.ndarray) -> bool:
    pairs = set(zip(got[fg].tolist(), ref[fg].tolist()))
    return len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("seed", range(6))
def test_matches_flood_fill(seed, connectivity):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(3, 14, size=3))
    classes = rng.choice([0, 0, 1, 2], size=shape, p=[0.3, 0.2, 0.3, 0.2]).astype(np.int8)
    if seed % 2:
        classes = np.asfortranarray(classes)     # NIfTI arrays come Fortran-ordered
    got, n = label_components(classes, connectivity)
    ref = _flood_fill(classes, connectivity)
    assert n == ref.max()
    assert _same_partition(got, ref, classes > 0)
    assert not got[classes == 0].any() and got.shape == classes.shape


def test_corner_touch_is_one_piece_only_with_26():
    a = np.zeros((4, 4, 4), np.uint8)
    a[0, 0, 0] = a[1, 1, 1] = 7          # touch at a corner
    a[3, 0, 3] = a[3, 1, 2] = 7          # touch along an edge, one step along the fast axis of C order
    assert label_components(a, 26)[1] == 2
    assert label_components(a, 6)[1] == 4
    assert label_components(np.asfortranarray(a), 26)[1] == 2


def test_long_snake_is_one_component():
    """A single winding path: the worst case for label propagation."""
    classes = np.zeros((1, 41, 41), np.int8)
    classes[0, ::2, :] = 1
    for r in range(1, 41, 2):
        classes[0, r, 40 if (r // 2) % 2 == 0 else 0] = 1
    for connectivity in (6, 26):
        got, n = label_components(classes, connectivity)
        assert n == 1 and np.array_equal(got > 0, classes > 0)


def test_same_value_apart_and_different_values_touching():
    a = np.zeros((3, 3, 9), np.int16)
    a[:, :, 0:2] = 20
    a[:, :, 2:4] = 120                   # touches 20 but is another value
    a[:, :, 6:8] = 20                    # 20 again, apart
    got, n = label_components(a)
    assert n == 3
    assert len(np.unique(got[a == 20])) == 2


def test_voxel_ids_follow_memory_order_and_empty_input():
    comp, n = voxel_components(np.zeros(0, np.int64), np.zeros(0, np.int16), (2, 2, 2), "C")
    assert n == 0 and comp.size == 0
    a = np.zeros((2, 2, 6), np.uint8)
    a[0, 0, 4] = 3
    a[1, 1, 0] = 3
    flat = a.ravel()
    nz = np.flatnonzero(flat)
    comp, n = voxel_components(nz, flat[nz], a.shape, "C")
    assert n == 2 and comp.tolist() == [0, 1]
    with pytest.raises(ValueError):
        voxel_components(nz, flat[nz], a.shape, "C", connectivity=18)
