"""`init` over a PACS-style DICOM tree: the first run reads every header, the second none.

    python benchmarks/dicom_inventory.py [--files 20000] [--keep DIR]

Builds a tree of `--files` small DICOM files (16 x 16 pixels: the inventory never reads pixels):
studies of four series each (sagittal T1 and T2, axial T2, a 3-image localizer), 80 files per
study, extension-less names, every study's files spread over nested folders. Then times the real
command line, `batchseg init --layout dicom`, three times on one project: first (every header
read), second (the cache: no header read), and after touching 1% of the files (only those read
again). Prints the wall and CPU times (the CPU time of the init process: on a shared machine the wall
time also counts the waits for a core) and the header counts init reports.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.uid import PYDICOM_ROOT_UID  # noqa: E402

from tests.dicom_factory import make_dataset  # noqa: E402

PER_STUDY = {"t1_tse_sag": (22, "sag", 12, 650), "t2_tse_sag": (22, "sag", 105, 3800),
             "t2_tse_tra": (33, "ax", 98, 4200), "localizer": (3, "mixed", 4, 8)}
ORIENT = {"sag": (0, 1, 0, 0, 0, -1), "ax": (1, 0, 0, 0, 1, 0), "cor": (1, 0, 0, 0, 0, -1)}


def build_tree(root: Path, n_files: int) -> int:
    per_study = sum(n for n, *_ in PER_STUDY.values())
    pixels = np.zeros((16, 16), np.uint16)
    written = 0
    for study in range(max(1, n_files // per_study)):
        uids = {"study_uid": f"{PYDICOM_ROOT_UID}9.{study}", "frame_uid": f"{PYDICOM_ROOT_UID}9.{study}.0"}
        k = 0
        for number, (name, (count, plane, te, tr)) in enumerate(PER_STUDY.items(), start=1):
            for inst in range(count):
                iop = ORIENT[("sag", "cor", "ax")[inst % 3]] if plane == "mixed" else ORIENT[plane]
                ds = make_dataset(pixels, row_cos=iop[:3], col_cos=iop[3:], position=(4.0 * inst, 0.0, 0.0),
                                  pixel_spacing=(1.0, 1.0), instance=inst + 1,
                                  series_uid=f"{uids['study_uid']}.{number}", **uids)
                ds.SeriesNumber, ds.SeriesDescription, ds.ProtocolName = number, name, name
                ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if name == "localizer" else "M"]
                ds.EchoTime, ds.RepetitionTime = te, tr
                folder = root / f"P{study // 50:03d}" / f"S{study:05d}" / ("A", "B", "B/C", "D")[k % 4]
                folder.mkdir(parents=True, exist_ok=True)
                ds.save_as(folder / f"IM{k:05d}", enforce_file_format=True)
                k += 1
                written += 1
    return written


def timed_init(project: Path, tree: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the child, what init said)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "batchseg", "init", "--project", str(project), "--dataset",
                             str(tree), "--layout", "dicom", "--segmenter", "noop"],
                            capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    cpu = _children_cpu() - cpu
    counts = re.search(r"(\d+) files: (\d+) headers read, (\d+) from the cache", result.stdout)
    studies = re.search(r"(\d+) studies listed, (\d+) with", result.stdout)
    return seconds, cpu, (f"{counts.group(2)} headers read, {counts.group(3)} from the cache; "
                     f"{studies.group(2)} of {studies.group(1)} studies with a sagittal T2")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--keep", type=Path, default=None, help="build the tree here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        tree, project = base / "export", base / "project"
        start = time.perf_counter()
        n = build_tree(tree, args.files)
        print(f"built {n} files in {time.perf_counter() - start:.1f} s under {tree}")
        print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, pydicom {pydicom.__version__}")
        for label in ("first init", "second init"):
            seconds, cpu, what = timed_init(project, tree)
            print(f"{label:28s} {seconds:7.2f} s wall, {cpu:7.2f} s CPU  ({what})")
        touched = sorted(tree.rglob("IM*"))[:: 100]
        for path in touched:
            os.utime(path)
            path.write_bytes(path.read_bytes())                 # same content, new mtime
        seconds, cpu, what = timed_init(project, tree)
        print(f"{f'after touching {len(touched)} files':28s} {seconds:7.2f} s wall, {cpu:7.2f} s CPU  ({what})")
        size = (project / "inventory" / "dicom_headers.json").stat().st_size
        print(f"header cache: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
