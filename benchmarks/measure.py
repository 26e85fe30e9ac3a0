"""Milliseconds of `measures.measure` on phantom label maps, and what the 26-connected pieces cost within it.

    python benchmarks/measure.py [--matrix 256,512] [--repeats 10]

For each matrix: one normal phantom's ground-truth instance mask (Fortran-ordered, as nibabel hands it out) and
its body mask as the semantic mask. Prints the median of `repeats` runs of the whole `measure` (bincount sums,
pieces, body centroids, the ordered sequence, LSTV findings) and, apart, of `components.voxel_components` alone on
the same labelled voxels, so the share the pieces add is visible; and the same for a map with one label split.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from batchseg.components import memory_order, voxel_components
from batchseg.measures import measure
from batchseg.synth import synth_dataset


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", default="256,512")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print("| matrix | labelled voxels | measure, nothing split | of which pieces | measure, one label split | with --spine |")
    print("|---|---|---|---|---|---|")
    for matrix in (int(m) for m in args.matrix.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            m = synth_dataset(Path(tmp) / "d", 1, seed=1, matrix=matrix, broken=False, variants=["normal"])
            img = nib.load(Path(tmp) / "d" / "ground_truth" / f"{m.studies[0].study_id}_seg-vert_msk.nii.gz")
            labels = np.asanyarray(img.dataobj)
        spine = np.where((labels > 0) & (labels < 100), 49, 0).astype(np.uint8)
        order = memory_order(labels)
        flat = labels.ravel(order=order)
        nz = np.flatnonzero(flat)
        whole = _median_ms(lambda: measure(labels, img.affine), args.repeats)
        pieces = _median_ms(lambda: voxel_components(nz, flat[nz], labels.shape, order), args.repeats)
        split = labels.copy(order="F")
        split[tuple(np.argwhere(split == 22)[:40].T)] = 0      # a gap through L3 ...
        split[0, 0, 0] = 22                                    # ... and a stray voxel of it
        broken = _median_ms(lambda: measure(split, img.affine), args.repeats)
        with_spine = _median_ms(lambda: measure(labels, img.affine, spine=spine), args.repeats)
        print(f"| {matrix} x {matrix} x {labels.shape[2]} | {nz.size} | {whole:.1f} ms | {pieces:.1f} ms | "
              f"{broken:.1f} ms | {with_spine:.1f} ms |")


if __name__ == "__main__":
    main()
