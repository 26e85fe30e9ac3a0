"""Connected components of a label map in plain numpy (no scipy): the runs way.

A "component" is a maximal set of voxels that share one nonzero value and are
linked through neighbours: 6-connectivity (faces) or 26-connectivity (faces,
edges and corners). The work is done on runs, not voxels: consecutive voxels of
one value along the fastest-varying memory axis form one run, found from the
list of nonzero positions alone (no pass over the background). Runs in
neighbouring lines that share a value and overlap (or touch diagonally, for 26)
are joined with a union-find over runs, which are ~30x fewer than voxels on
spine masks. The cost is O(labelled voxels), like the bincounts in measures.py.
"""
from __future__ import annotations

import numpy as np

CONNECTIVITY = (6, 26)


def memory_order(a: np.ndarray) -> str:
    """'F' when `a` is Fortran-ordered (NIfTI arrays are), else 'C': the order to walk it without a copy."""
    return "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"


def voxel_components(nz: np.ndarray, lab: np.ndarray, shape: tuple[int, int, int], order: str,
                     connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Component id (0..n-1) of every labelled voxel, and n.

    `nz` are the flat indices (in `order`, ascending) of the labelled voxels of a
    3-D array of `shape`, `lab` their values. Ids follow the first voxel of each
    component in memory order.
    """
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity must be one of {CONNECTIVITY}, not {connectivity}")
    if nz.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    nz = np.asarray(nz, dtype=np.int64)
    lab = np.asarray(lab)
    n_fast = shape[0] if order == "F" else shape[2]
    n_mid = shape[1]
    n_outer = shape[2] if order == "F" else shape[0]

    # Runs: a voxel starts one unless it follows its memory neighbour in the same line with the same value.
    start = np.ones(nz.size, dtype=bool)
    start[1:] = (nz[1:] != nz[:-1] + 1) | (lab[1:] != lab[:-1]) | (nz[1:] % n_fast == 0)
    first = np.flatnonzero(start)
    length = np.diff(np.append(first, nz.size))
    line = nz[first] // n_fast
    s = nz[first] % n_fast
    e = s + length - 1
    _, value = np.unique(lab[first], return_inverse=True)   # compact value ids keep the sort keys small
    value = value.astype(np.int64)
    n_values = int(value.max()) + 1

    # Runs sorted by (line, value, start); within one (line, value) they are disjoint, so the ends sort too.
    key = line * n_values + value
    sort = np.lexsort((s, key))
    span = n_fast + 2                                        # room for start - 1 and end + 1
    key_s = key[sort] * span + (s[sort] + 1)
    key_e = key[sort] * span + (e[sort] + 1)

    mid, outer = line % n_mid, line // n_mid
    reach = 1 if connectivity == 26 else 0                    # a diagonal step along the fast axis
    offsets = ((0, 1), (1, 0)) if connectivity == 6 else ((0, 1), (1, -1), (1, 0), (1, 1))
    a_parts, b_parts = [], []
    for d_outer, d_mid in offsets:
        ok = (mid + d_mid >= 0) & (mid + d_mid < n_mid) & (outer + d_outer < n_outer)
        runs = np.flatnonzero(ok)
        if runs.size == 0:
            continue
        target = (line[runs] + d_outer * n_mid + d_mid) * n_values + value[runs]
        # Runs of the target line with the same value whose end >= s - reach and start <= e + reach.
        lo = np.searchsorted(key_e, target * span + (s[runs] - reach + 1), side="left")
        hi = np.searchsorted(key_s, target * span + (e[runs] + reach + 1), side="right")
        count = np.maximum(hi - lo, 0)
        if not count.any():
            continue
        a = np.repeat(runs, count)
        base = np.repeat(lo - np.concatenate([[0], np.cumsum(count)[:-1]]), count)
        b = sort[base + np.arange(a.size)]
        a_parts.append(a)
        b_parts.append(b)

    parent = _union(first.size, a_parts, b_parts)
    _, run_comp = np.unique(parent, return_inverse=True)
    # np.unique numbers roots by value; roots are each component's smallest run, i.e. memory order.
    n = int(run_comp.max()) + 1
    return np.repeat(run_comp.astype(np.int64), length), n


def label_components(labels: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Components of voxels sharing one nonzero value of a 3-D array.

    Returns (int32 array with 0 for background and 1..n per component, n).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"label_components needs a 3-D array, got shape {labels.shape}")
    order = memory_order(labels)
    flat = labels.ravel(order=order)
    nz = np.flatnonzero(flat)
    comp, n = voxel_components(nz, flat[nz], labels.shape, order, connectivity)
    out = np.zeros(labels.size, dtype=np.int32)
    out[nz] = comp + 1
    return out.reshape(labels.shape, order=order), n


def _union(n: int, a_parts: list[np.ndarray], b_parts: list[np.ndarray]) -> np.ndarray:
    """Root of every node after joining the edges (a, b): the smallest node of its component.

    Each round hooks the larger root of every unresolved edge onto the smaller one,
    then compresses paths fully. Parents only ever decrease, so no cycle can form.
    """
    parent = np.arange(n)
    if not a_parts:
        return parent
    a = np.concatenate(a_parts)
    b = np.concatenate(b_parts)
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
    return parent
