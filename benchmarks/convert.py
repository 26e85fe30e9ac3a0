"""DICOM -> .nii.gz: batchseg's converter against the dcm2niix binary, side by side.

    python benchmarks/convert.py [--repeats 9] [--levels 1,6]

For each series (the real decubitus series, the same as one enhanced multi-frame
file, a synthetic 512x512 series) the two tools run alternately (batchseg, dcm2niix, batchseg, ...)
so that cache and CPU-frequency drift hit both alike; the median wall time of
each is printed with the ratio. batchseg runs in-process (as the pipeline calls
it); dcm2niix as a subprocess with `-z y`, its usual invocation. --levels also
times batchseg at other gzip levels and prints the file sizes.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from batchseg import dicom  # noqa: E402
from tests.dicom_factory import make_volume, write_enhanced, write_series  # noqa: E402

REAL = ROOT / ".." / "shared" / "data" / "dcm_qa_decubitus" / "HFS" / "dicom"


def _dcm2niix() -> str:
    found = shutil.which("dcm2niix", path=str(Path(sys.executable).parent)) or shutil.which("dcm2niix")
    if not found:
        sys.exit("dcm2niix not found: pip install dcm2niix")
    return found


def _time_batchseg(src: Path, out: Path, level: int) -> float:
    t = time.perf_counter()
    data, affine, _ = dicom.read_series(src)
    dicom.write_nifti(data, affine, out, level=level)
    return time.perf_counter() - t


def _time_dcm2niix(exe: str, src: Path, out_dir: Path) -> float:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    t = time.perf_counter()
    subprocess.run([exe, "-z", "y", "-b", "n", "-f", "ref", "-o", str(out_dir), str(src)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def bench(name: str, src: Path, work: Path, exe: str, repeats: int, levels: list[int]) -> None:
    ours = work / "ours.nii.gz"
    theirs_dir = work / "dcm2niix"
    times: dict[str, list[float]] = {f"batchseg(gz{lv})": [] for lv in levels}
    times["dcm2niix"] = []
    _time_batchseg(src, ours, levels[0])  # warm the page cache and imports for both
    _time_dcm2niix(exe, src, theirs_dir)
    sizes = {}
    for _ in range(repeats):
        for lv in levels:
            times[f"batchseg(gz{lv})"].append(_time_batchseg(src, ours, lv))
            sizes[f"batchseg(gz{lv})"] = ours.stat().st_size
        times["dcm2niix"].append(_time_dcm2niix(exe, src, theirs_dir))
    sizes["dcm2niix"] = next(theirs_dir.glob("*.nii.gz")).stat().st_size
    ref = statistics.median(times["dcm2niix"])
    print(f"\n{name}: {src}")
    for tool, ts in times.items():
        med = statistics.median(ts)
        print(f"  {tool:16s} median {med * 1000:8.1f} ms  (min {min(ts) * 1000:7.1f})  "
              f"ratio {med / ref:5.2f}x  file {sizes[tool] / 1e6:6.2f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--levels", default=str(dicom.GZIP_LEVEL),
                    help="comma-separated gzip levels for batchseg (default: the shipped level)")
    args = ap.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    exe = _dcm2niix()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    version = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.strip().splitlines()
    print(f"machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu}")
    print(f"python {platform.python_version()}, dcm2niix {version[0] if version else '?'}, "
          f"batchseg gzip level {dicom.GZIP_LEVEL}, repeats {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if REAL.is_dir():
            (tmp / "real").mkdir()
            bench("real HFS 35x256x256 uint16", REAL, tmp / "real", exe, args.repeats, levels)
            write_enhanced(sorted(REAL.iterdir()), tmp / "enhanced_dicom" / "series.dcm")
            (tmp / "enhanced").mkdir()
            bench("real HFS as one enhanced multi-frame file", tmp / "enhanced_dicom", tmp / "enhanced", exe,
                  args.repeats, levels)
        else:
            print("\n(real HFS series absent: shared data folder missing)")
        synth = tmp / "synth_dicom"
        write_series(synth, make_volume(20, 512, 512, dtype=np.int16, high=1200, seed=1),
                     pixel_spacing=(0.55, 0.55), step=4.5)
        (tmp / "synth").mkdir()
        bench("synthetic 20x512x512 int16", synth, tmp / "synth", exe, args.repeats, levels)


if __name__ == "__main__":
    main()
