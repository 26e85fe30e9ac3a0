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
    return available_cpus({})      # not SLURM_CPUS_PER_TASK: a lone worker owns its affinity
