"""How busy SPINEPS keeps a GPU through batchseg, and how many workers per GPU fill it.

    python benchmarks/gpu.py pipeline [--studies 8] [--matrix 512] [--size real|small]
                                      [--workers-per-gpu 1,2,3,4] [--gpus 0] [--save FILE]
    python benchmarks/gpu.py networks [--size real|small] [--series 20x512x512] [--spacing 0.59,4.5]
                                      [--vertebrae 9] [--repeats 3] [--cpu-stages FILE]
    python benchmarks/gpu.py small    # both modes, small, on the CPU: what the test suite runs

pipeline (MEASURED): synthesizes RSNA-sized Sagittal T2/STIR series (15-20 slices of MATRIX^2,
3.3-4.5 mm apart), builds SPINEPS model folders with designed weights (tests/spineps_models.py:
`real` has the released models' architecture and size), and runs `batchseg run` with k workers
per GPU for every k asked. It prints seconds per stage (ledger medians), studies per hour, the GPU
busy fraction (nvidia-smi sampled every 0.5 s, when there is a GPU) and the peak GPU memory of
one worker (the segmenter records torch's peak per study). The segmenter times the networks' own
calls inside every study (segment.net_semantic, net_instance, net_labeling); the rest of a
study's seconds are the CPU seconds a GPU cannot take away. `--save FILE` keeps them for the
networks mode.

networks (MEASURED on the device it runs on): the three networks alone at real size, as SPINEPS
calls them: the semantic nnU-Net as a sliding window (step 0.5, Gaussian weighting, autocast
on CUDA, logits accumulated in half precision on the device, as nnU-Net v2 does) over an
RSNA-sized volume at the model's resolution; one instance U-Net forward per vertebra on
SPINEPS's cutout (in batches of 4, as SPINEPS does); one labeling forward per vertebra. Timed
with CUDA events on a GPU; peak memory from torch's allocator plus the CUDA context. It needs
only torch, dynamic-network-architectures, monai and SPINEPS's unet3D.py, not nnU-Net or SimpleITK.
With `--cpu-stages` it then PREDICTS (derived, not measured) the busy fraction and studies per
hour at 1-4 workers per GPU: a study needs c CPU seconds and g GPU seconds; k workers overlap
one study's CPU stages with another's networks, so a GPU does min(k / (c + g), 1 / g) studies
per second and is busy min(1, k g / (c + g)) of the time, as long as k workers fit in its
memory and each still has its CPU threads. The prediction ignores two workers' networks
slowing each other down beyond that sharing, and CPU stages slowing down when workers share
too few cores.

small (both modes, small, on the CPU): the small designed models with the semantic net at 3 mm
(size `tiny`), 64^2 series: a check that the benchmark runs, not a measurement of anything but
the arithmetic. For CPU figures use `pipeline --size cpu`: the small networks at the real
semantic model's resolution and patch, so the CPU work around the networks is the real one's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:       # tests.spineps_models, when run as a script
    sys.path.insert(0, str(REPO))

from batchseg.placement import (GpuShare, best_share, predict_gpu_share,  # noqa: E402
                                split_study_seconds)
from tests.spineps_models import SIZES, ModelSet, bare_networks  # noqa: E402

INSTANCE_BATCH = 4                  # SPINEPS's proc_inst_batch_size default


# -- the networks alone -----------------------------------------------------------------------------

@dataclass
class NetworkTimes:
    device: str
    size: str
    volume: tuple[int, int, int]          # semantic input at the model's resolution (nnU-Net's R, I, P)
    tiles: int
    vertebrae: int
    seconds: dict[str, float]             # per study, median over repeats
    peak_allocated_mb: float | None = None
    peak_reserved_mb: float | None = None
    context_mb: float | None = None       # the CUDA context and libraries, outside torch's allocator
    threads: int = 0

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    @property
    def worker_memory_mb(self) -> float | None:
        if self.peak_reserved_mb is None:
            return None
        return self.peak_reserved_mb + (self.context_mb or 0.0)


def sliding_window_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """nnU-Net v2's tile positions along one axis (compute_steps_for_sliding_window)."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step)) + 1
    actual = (size - patch) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


def gaussian_importance(patch: Sequence[int], device: Any, dtype: Any) -> Any:
    """nnU-Net's Gaussian tile weight (sigma = patch / 8), normalised to a maximum of 1."""
    import torch

    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in patch]
    grids = torch.meshgrid(*axes, indexing="ij")
    g = torch.exp(-sum((grid / (n / 8)) ** 2 / 2 for grid, n in zip(grids, patch)))
    g = g / g.max()
    return g.clamp_min(g[g > 0].min()).to(device=device, dtype=dtype)


def semantic_volume(series: tuple[int, int, int], spacing: tuple[float, float], size: ModelSet) -> tuple[int, int, int]:
    """nnU-Net's (R, I, P) voxels of a sagittal series (slices x rows x cols) at the semantic model's resolution.

    A sagittal slice's rows run down the spine (I) and its columns front to back (P).
    """
    slices, rows, cols = series
    inplane, step = spacing
    zoom_p, zoom_i, zoom_r = size.semantic_zoom
    return (round(slices * step / zoom_r), round(rows * inplane / zoom_i), round(cols * inplane / zoom_p))


def _timer(device: Any):
    """A function that runs `call` and returns its seconds: CUDA events on a GPU, perf_counter elsewhere."""
    import torch

    def timed(call) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0
    return timed


def time_networks(size: ModelSet, volume: tuple[int, int, int], vertebrae: int, repeats: int,
                  device_name: str = "auto") -> NetworkTimes:
    import torch

    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    context_mb = None
    if device.type == "cuda":
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info(device)
        context_mb = (total - free) / 2**20        # this process alone on the device: context + libraries
        torch.backends.cudnn.benchmark = True      # what TPTBox's nnU-Net loader sets
    nets = {name: net.to(device) for name, net in bare_networks(size).items()}
    patch = size.semantic_patch
    padded = tuple(max(v, p) for v, p in zip(volume, patch))
    tiles = [(a, b, c) for a in sliding_window_starts(padded[0], patch[0])
             for b in sliding_window_starts(padded[1], patch[1]) for c in sliding_window_starts(padded[2], patch[2])]
    n_classes = 1 + len(size.semantic_labels)
    autocast = torch.autocast("cuda") if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    image = torch.randn((1, 1, *padded), device=device)
    weight = gaussian_importance(patch, device, torch.float16 if device.type == "cuda" else torch.float32)

    def semantic() -> None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        logits = torch.zeros((n_classes, *padded), dtype=dtype, device=device)
        counts = torch.zeros(padded, dtype=dtype, device=device)
        with torch.inference_mode(), autocast:
            for a, b, c in tiles:
                window = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
                out = nets["semantic"](image[(slice(None), slice(None), *window)])[0]
                logits[(slice(None), *window)] += (out * weight).to(dtype)
                counts[window] += weight
            (logits / counts).argmax(0)

    cutout = size.instance_cutout
    one_hot = torch.zeros((min(INSTANCE_BATCH, vertebrae), 11, *cutout), device=device)
    one_hot[:, 0] = 1.0

    def instance() -> None:
        with torch.inference_mode():
            left = vertebrae
            while left > 0:
                batch = one_hot[:min(INSTANCE_BATCH, left)]
                nets["instance"](batch).argmax(1).cpu()
                left -= len(batch)

    crop = torch.randn((1, 1, *size.labeling_input), device=device)

    def labeling() -> None:
        with torch.inference_mode():
            for _ in range(vertebrae):
                torch.softmax(nets["labeling"](crop), 1).cpu()

    calls = {"semantic": semantic, "instance": instance, "labeling": labeling}
    timed = _timer(device)
    for call in calls.values():                     # warm-up: cuDNN's algorithm search, lazy init
        timed(call)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            runs[name].append(timed(call))
    times = NetworkTimes(device=_device_label(device), size=size.name, volume=padded, tiles=len(tiles),
                         vertebrae=vertebrae, seconds={n: statistics.median(v) for n, v in runs.items()},
                         context_mb=context_mb, threads=torch.get_num_threads())
    if device.type == "cuda":
        times.peak_allocated_mb = torch.cuda.max_memory_allocated(device) / 2**20
        times.peak_reserved_mb = torch.cuda.max_memory_reserved(device) / 2**20
    return times


def _device_label(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {_cpu_name()}, {os.cpu_count()} cores"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


# -- the whole pipeline -------------------------------------------------------------------------

class GpuSampler(threading.Thread):
    """nvidia-smi's utilisation and memory every 0.5 s, while the pipeline runs (nothing without a GPU)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int, float, float]] = []   # time, gpu index, util %, memory MiB
        self.proc: subprocess.Popen[str] | None = None

    def run(self) -> None:
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3 and parts[0].isdigit():
                try:
                    self.samples.append((time.time(), int(parts[0]), float(parts[1]), float(parts[2])))
                except ValueError:
                    continue

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self.join(timeout=5)

    def busy(self, start: float, end: float, gpus: Sequence[str]) -> float | None:
        wanted = {int(g) for g in gpus if g.isdigit()}
        values = [util for at, index, util, _ in self.samples if start <= at <= end and (not wanted or index in wanted)]
        return statistics.mean(values) / 100.0 if values else None


@dataclass
class PipelineRun:
    workers_per_gpu: int
    workers: int
    done: int
    studies: int
    seconds: float                        # first claim to last done, from the ledger
    stages: dict[str, float]              # median seconds per stage
    network_seconds: float                # median per study: the three networks' own calls
    cpu_seconds: float                    # median per study: everything else
    busy_fraction: float | None           # sampled, None without a GPU
    gpu_peak_memory_mb: float | None      # one worker's, from the segmenter's metadata
    failed: dict[str, int] = field(default_factory=dict)   # error class -> studies

    @property
    def studies_per_hour(self) -> float:
        return self.done / self.seconds * 3600.0 if self.seconds > 0 else 0.0


def _batchseg(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPINEPS_NO_CITATION_REMINDER": "1"}
    return subprocess.run([sys.executable, "-m", "batchseg", *args], capture_output=True, text=True, env=env)


def _read_run(project: Path) -> dict[str, Any]:
    from batchseg.config import load_config
    from batchseg.ledger import Ledger
    from batchseg.report.model import gpu_memory_seen

    config = load_config(project)
    ledger = Ledger.for_config(config)
    try:
        done = list(ledger.studies("done"))
        failed: dict[str, int] = {}
        for row in ledger.studies("failed"):
            failed[row["error_class"]] = failed.get(row["error_class"], 0) + 1
        events = ledger.history()
        seen = gpu_memory_seen(config, ledger)
    finally:
        ledger.close()
    stages: dict[str, list[float]] = {}
    network, cpu = [], []
    for study in done:
        timings = study["timings"] or {}
        for stage, seconds in timings.items():
            stages.setdefault(stage, []).append(seconds)
        split = split_study_seconds(timings)
        if split is not None:
            cpu.append(split[0])
            network.append(split[1])
    claims = [e["at"] for e in events if e["event"] == "claimed"]
    ends = [e["at"] for e in events if e["event"] == "done"]
    return {
        "done": len(done),
        "seconds": max(ends) - min(claims) if claims and ends else 0.0,
        "stages": {k: statistics.median(v) for k, v in stages.items()},
        "network_seconds": statistics.median(network) if network else 0.0,
        "cpu_seconds": statistics.median(cpu) if cpu else 0.0,
        "gpu_peak_memory_mb": max((item.peak_mb for item in seen), default=None),
        "failed": failed,
    }


def run_pipeline(root: Path, data: Path, models: Path, k: int, gpus: Sequence[str], studies: int) -> PipelineRun:
    project = root / f"project-k{k}"
    init = _batchseg("init", "--project", str(project), "--dataset", str(data), "--segmenter", "spineps",
                     "--models", str(models))
    if init.returncode != 0:
        raise SystemExit(f"batchseg init failed: {init.stderr}")
    workers = k * max(1, len(gpus))
    sampler = GpuSampler()
    sampler.start()
    start = time.time()
    args = ["run", "--project", str(project), "--workers", str(workers)]
    if gpus:
        args += ["--gpus", ",".join(gpus)]
    run = _batchseg(*args)
    end = time.time()
    sampler.stop()
    if run.returncode not in (0, 1):
        raise SystemExit(f"batchseg run failed ({run.returncode}): {run.stderr[-2000:]}")
    return PipelineRun(k, workers, studies=studies, busy_fraction=sampler.busy(start, end, gpus), **_read_run(project))


def pipeline_mode(args: argparse.Namespace) -> dict[str, Any]:
    from batchseg.placement import available_cpus
    from batchseg.synth import synth_dataset
    from tests.spineps_models import build_random_models

    size = SIZES[args.size]
    gpus = [g for g in (args.gpus or "").split(",") if g]
    ks = [int(k) for k in args.workers_per_gpu.split(",")]
    with tempfile.TemporaryDirectory(prefix="batchseg-gpu-") as tmp:
        root = Path(tmp)
        synth_dataset(root / "data", args.studies, seed=11, matrix=args.matrix, broken=False)
        models = build_random_models(root / "models", size)
        runs = [run_pipeline(root, root / "data", models, k, gpus, args.studies) for k in ks]
    base = runs[0]
    result = {
        "mode": "pipeline", "size": size.name, "matrix": args.matrix, "studies": args.studies, "gpus": gpus,
        "machine": _device_label_here(gpus),
        "threads_per_worker": [max(1, available_cpus() // r.workers) for r in runs],
        "runs": [asdict(r) | {"studies_per_hour": r.studies_per_hour} for r in runs],
        # what a GPU cannot take away: from the one-worker run, where nothing competes for the CPUs
        "cpu_seconds": base.cpu_seconds, "network_seconds": base.network_seconds,
    }
    print_pipeline(result, runs)
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=2))
        print(f"saved to {args.save}")
    return result


def _device_label_here(gpus: Sequence[str]) -> str:
    import torch

    if gpus and torch.cuda.is_available():
        return _device_label(torch.device("cuda:0"))
    return _device_label(torch.device("cpu"))


def networks_mode(args: argparse.Namespace) -> dict[str, Any]:
    size = SIZES[args.size]
    series = tuple(int(v) for v in args.series.lower().split("x"))
    inplane, step = (float(v) for v in args.spacing.split(","))
    volume = semantic_volume(series, (inplane, step), size)  # type: ignore[arg-type]
    times = time_networks(size, volume, args.vertebrae, args.repeats, args.device)
    result: dict[str, Any] = {"mode": "networks", "size": size.name, "series": series,
                              "spacing": [inplane, step], "times": asdict(times)}
    print_networks(times)
    if args.cpu_stages:
        stages = json.loads(Path(args.cpu_stages).read_text())
        gpu_total = _gpu_memory_mb()
        rows = predict_gpu_share(stages["cpu_seconds"], times.total, times.worker_memory_mb, gpu_total)
        result["prediction"] = {"cpu_seconds": stages["cpu_seconds"], "cpu_source": stages.get("machine"),
                                "gpu_seconds": times.total, "rows": [asdict(r) for r in rows],
                                "best": asdict(best_share(rows))}
        print_prediction(stages, times, rows, gpu_total)
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=2))
        print(f"saved to {args.save}")
    return result


def _gpu_memory_mb() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 2**20
    except ImportError:
        pass
    return None


def small_mode(args: argparse.Namespace) -> None:
    """Both modes with the small models on the CPU, chained the way a GPU run chains them."""
    with tempfile.TemporaryDirectory(prefix="batchseg-gpu-small-") as tmp:
        stages = Path(tmp) / "stages.json"
        pipeline_mode(argparse.Namespace(size="tiny", studies=args.studies, matrix=64, workers_per_gpu="1,2",
                                         gpus="", save=str(stages)))
        networks_mode(argparse.Namespace(size="tiny", series="8x32x32", spacing="4.0,4.0", vertebrae=3,
                                         repeats=1, device="cpu", cpu_stages=str(stages), save=""))
    print("SMALL SETTING on the CPU: tiny designed models, 64x64 series, semantic net at 3 mm; these figures "
          "check that the benchmark runs, they measure no GPU")


# -- printing ---------------------------------------------------------------------------------

def _mb(value: float | None) -> str:
    return f"{value:,.0f} MB" if value is not None else "n/a"


def print_pipeline(result: dict[str, Any], runs: Sequence[PipelineRun]) -> None:
    print(f"\n## pipeline (measured): {result['studies']} synthetic studies, matrix {result['matrix']}, "
          f"models '{result['size']}', on {result['machine']}")
    names = sorted({s for r in runs for s in r.stages}, key=lambda s: (s == "total", s))
    print("| stage (median s per study) | " + " | ".join(f"{r.workers_per_gpu} worker(s)/GPU" for r in runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r.stages[name]:.3f}" if name in r.stages else "" for r in runs) + " |")
    print("| networks' own calls | " + " | ".join(f"{r.network_seconds:.3f}" for r in runs) + " |")
    print("| everything else (CPU) | " + " | ".join(f"{r.cpu_seconds:.3f}" for r in runs) + " |")
    print("| CPU threads per worker | " + " | ".join(str(t) for t in result["threads_per_worker"]) + " |")
    print("| studies done | " + " | ".join(f"{r.done}/{r.studies}" for r in runs) + " |")
    print("| studies failed | " + " | ".join(", ".join(f"{n} {c}" for c, n in sorted(r.failed.items())) or "none"
                                             for r in runs) + " |")
    print("| studies/hour | " + " | ".join(f"{r.studies_per_hour:,.0f}" for r in runs) + " |")
    print("| GPU busy (sampled) | " + " | ".join(
        f"{r.busy_fraction:.0%}" if r.busy_fraction is not None else "n/a (no GPU)" for r in runs) + " |")
    print("| peak GPU memory, one worker | " + " | ".join(_mb(r.gpu_peak_memory_mb) for r in runs) + " |")


def print_networks(times: NetworkTimes) -> None:
    print(f"\n## networks alone (measured): models '{times.size}' on {times.device}")
    print(f"semantic input {times.volume[0]}x{times.volume[1]}x{times.volume[2]} (R, I, P) -> {times.tiles} "
          f"tiles; {times.vertebrae} vertebrae")
    print("| network | seconds per study |")
    print("|---|---|")
    for name, seconds in times.seconds.items():
        print(f"| {name} | {seconds:.3f} s |")
    print(f"| all three | {times.total:.3f} s |")
    print(f"peak GPU memory of one worker: {_mb(times.worker_memory_mb)} (torch reserved "
          f"{_mb(times.peak_reserved_mb)} + CUDA context {_mb(times.context_mb)})")


def print_prediction(stages: dict[str, Any], times: NetworkTimes, rows: Sequence[GpuShare],
                     gpu_memory_mb: float | None) -> None:
    print(f"\n## workers per GPU (derived): c = {stages['cpu_seconds']:.2f} CPU s per study "
          f"(measured on {stages.get('machine', '?')}), g = {times.total:.3f} GPU s per study (measured on "
          f"{times.device}); GPU memory {_mb(gpu_memory_mb)}")
    print("| workers per GPU | GPU busy | studies/hour per GPU | GPU memory | fits |")
    print("|---|---|---|---|---|")
    for r in rows:
        fits = "yes" if r.fits else "no" if r.fits is False else "unknown"
        print(f"| {r.workers_per_gpu} | {r.busy_fraction:.0%} | {r.studies_per_hour:,.0f} | {_mb(r.memory_mb)} | {fits} |")
    best = best_share(rows)
    print(f"suggested: {best.workers_per_gpu} worker(s) per GPU ({best.busy_fraction:.0%} busy)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("pipeline", help="batchseg + SPINEPS end to end")
    p.add_argument("--studies", type=int, default=8)
    p.add_argument("--matrix", type=int, default=512)
    p.add_argument("--size", choices=sorted(SIZES), default="real")
    p.add_argument("--workers-per-gpu", default="1,2,3,4")
    p.add_argument("--gpus", default="", help="GPUs to spread the workers over, e.g. 0 or 0,1 (none: CPU)")
    p.add_argument("--save", default="", help="write the results (and the CPU seconds per study) as JSON")
    n = modes.add_parser("networks", help="the three networks alone")
    n.add_argument("--size", choices=sorted(SIZES), default="real")
    n.add_argument("--series", default="20x512x512", help="slices x rows x cols of the sagittal series")
    n.add_argument("--spacing", default="0.59,4.5", help="in-plane pixel size and slice step, mm")
    n.add_argument("--vertebrae", type=int, default=9, help="instance cutouts and labeling crops per study")
    n.add_argument("--repeats", type=int, default=3)
    n.add_argument("--device", default="auto")
    n.add_argument("--cpu-stages", default="", help="a pipeline run's --save file: predict workers per GPU")
    n.add_argument("--save", default="")
    s = modes.add_parser("small", help="both modes, small, on the CPU (what the tests run)")
    s.add_argument("--studies", type=int, default=2)
    args = parser.parse_args(argv)
    {"pipeline": pipeline_mode, "networks": networks_mode, "small": small_mode}[args.mode](args)


if __name__ == "__main__":
    main()
