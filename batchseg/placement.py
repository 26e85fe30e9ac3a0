"""Where each worker of a group runs: its GPU, and its share of the CPUs.

A group is the N `batchseg work` processes that one `batchseg run` or one Slurm array task
starts. Several workers per GPU keep it busy: while one worker runs its CPU stages (DICOM
conversion, N4 bias correction, post-processing, QC) another one's networks use the GPU.
Workers are spread over the GPUs round robin (worker i gets GPU i mod K, through its own
CUDA_VISIBLE_DEVICES, so every worker sees exactly one device as cuda:0), and the CPUs are
split evenly, through the variables that torch, numpy's BLAS, OpenMP and ITK read at start-up.
Without the split, every worker would start one thread per core of the whole node and N
workers would fight over the same cores.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

GPU_ENV = "CUDA_VISIBLE_DEVICES"
THREADS_ENV = "BATCHSEG_THREADS"        # read by the worker (torch.set_num_threads)
# Read once, when each library starts: OpenMP (torch's CPU ops, ANTs), the BLAS behind numpy,
# numexpr, and ITK (SimpleITK, and the N4 bias correction SPINEPS runs through ANTs).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", THREADS_ENV)

# An index ("0"), a GPU or MIG UUID ("GPU-8f2c...", "MIG-..."): no blanks, commas or quotes.
_GPU_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:/.-]*")


class PlacementError(ValueError):
    """A GPU list or worker count that cannot be used."""


@dataclass(frozen=True)
class Slot:
    """One worker's place in its group."""

    index: int
    gpu: str | None = None       # its CUDA_VISIBLE_DEVICES; None: inherit the group's
    threads: int | None = None   # its CPU threads; None: leave the libraries' defaults

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` with this worker's GPU and thread settings applied."""
        env = dict(base)
        if self.gpu is not None:
            env[GPU_ENV] = self.gpu
        if self.threads is not None:
            for name in THREAD_VARIABLES:
                env[name] = str(self.threads)
        return env

    def describe(self) -> str:
        gpu = f"GPU {self.gpu}" if self.gpu is not None else "no GPU pinned"
        threads = f"{self.threads} thread(s)" if self.threads is not None else "default threads"
        return f"worker w{self.index}: {gpu}, {threads}"


def parse_gpus(text: str | Sequence[str] | None) -> list[str]:
    """'0,1' (or ['0', '1']) as a list of device names; '' and None mean none."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    gpus = [item.strip() for item in items if item.strip()]
    for gpu in gpus:
        if not _GPU_NAME.fullmatch(gpu):
            raise PlacementError(f"{gpu!r} is not a GPU index or UUID (give them like 0,1 or GPU-<uuid>)")
    if len(set(gpus)) != len(gpus):
        raise PlacementError(f"GPU list {','.join(gpus)} names a GPU twice")
    return gpus


def available_cpus(environ: Mapping[str, str] | None = None) -> int:
    """The CPUs this group may use: Slurm's --cpus-per-task inside a task, else this process's affinity."""
    env = os.environ if environ is None else environ
    slurm = env.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    return usable_cpus()


def usable_cpus() -> int:
    """The CPUs this process may run on (a Slurm job's or a container's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def plan_slots(workers: int, gpus: Sequence[str] = (), cpus: int | None = None) -> list[Slot]:
    """N workers over the GPUs round robin, the CPUs split evenly (at least one thread each)."""
    if workers < 1:
        raise PlacementError(f"a group needs at least one worker, not {workers}")
    threads = max(1, cpus // workers) if cpus else None
    return [Slot(i, gpus[i % len(gpus)] if gpus else None, threads) for i in range(workers)]


def worker_threads(environ: Mapping[str, str] | None = None) -> int:
    """CPU threads this worker should use: its share of the group's CPUs, else all it may run on."""
    env = os.environ if environ is None else environ
    value = env.get(THREADS_ENV, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return usable_cpus()      # not SLURM_CPUS_PER_TASK: a lone worker owns its affinity


# -- how many workers per GPU ---------------------------------------------------------------------

# The SPINEPS segmenter's timings of its networks' own calls (segmenters/spineps.py), as the
# pipeline stores them: the seconds a GPU is busy with a study. The rest of a study is CPU work.
NETWORK_TIMINGS = ("segment.net_semantic", "segment.net_instance", "segment.net_labeling")
BUSY_TARGET = 0.9            # "kept busy": the suggestion is the fewest workers reaching this


def split_study_seconds(timings: Mapping[str, float]) -> tuple[float, float] | None:
    """(CPU seconds, network seconds) of one done study; None when its networks were not timed."""
    if not any(name in timings for name in NETWORK_TIMINGS) or "total" not in timings:
        return None
    network = sum(float(timings.get(name, 0.0)) for name in NETWORK_TIMINGS)
    return max(0.0, float(timings["total"]) - network), network


@dataclass(frozen=True)
class GpuShare:
    """DERIVED: what k workers sharing one GPU should give (see predict_gpu_share)."""

    workers_per_gpu: int
    busy_fraction: float
    studies_per_hour: float
    memory_mb: float | None        # k x one worker's peak, when that is known
    fits: bool | None              # in the GPU's memory; None: unknown


def predict_gpu_share(cpu_seconds: float, gpu_seconds: float, worker_memory_mb: float | None = None,
                      gpu_memory_mb: float | None = None, workers: Sequence[int] = (1, 2, 3, 4)) -> list[GpuShare]:
    """k workers per GPU, each alternating c CPU seconds and g GPU seconds per study.

    One worker keeps the GPU busy g / (c + g) of the time; k workers overlap one study's CPU
    stages with another's networks, up to the GPU's limit of one study per g seconds:
    min(k / (c + g), 1 / g) studies per second, busy min(1, k g / (c + g)). This assumes each
    worker keeps its CPU threads and ignores networks slowing each other beyond sharing the GPU.
    """
    rows = []
    cycle = cpu_seconds + gpu_seconds
    for k in workers:
        rate = min(k / cycle, 1.0 / gpu_seconds) if gpu_seconds > 0 else k / cycle
        memory = worker_memory_mb * k if worker_memory_mb is not None else None
        fits = memory <= gpu_memory_mb if memory is not None and gpu_memory_mb else None
        rows.append(GpuShare(k, min(1.0, k * gpu_seconds / cycle) if cycle > 0 else 0.0, rate * 3600.0, memory, fits))
    return rows


def best_share(rows: Sequence[GpuShare]) -> GpuShare:
    """The fewest workers that keep the GPU BUSY_TARGET busy and fit; else the busiest that fits."""
    usable = [r for r in rows if r.fits is not False] or list(rows[:1])
    for row in usable:
        if row.busy_fraction >= BUSY_TARGET:
            return row
    return max(usable, key=lambda r: (r.busy_fraction, -r.workers_per_gpu))


def gpus_in_gres(gres: str) -> int:
    """GPUs a --gres value asks for per task: 'gpu:2' and 'gpu:a100:2' -> 2, 'gpu' -> 1, '' -> 0."""
    total = 0
    for item in (gres or "").split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total
