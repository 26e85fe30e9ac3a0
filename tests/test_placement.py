"""placement.py: GPUs round robin and the CPU split, as workers of a group receive them."""
from __future__ import annotations

import pytest

from batchseg.placement import (GPU_ENV, THREAD_VARIABLES, PlacementError, Slot, available_cpus, parse_gpus,
                                plan_slots, worker_threads)


def test_workers_go_round_robin_over_the_gpus_and_split_the_cpus() -> None:
    slots = plan_slots(3, ["0", "1"], cpus=8)
    assert [(s.index, s.gpu, s.threads) for s in slots] == [(0, "0", 2), (1, "1", 2), (2, "0", 2)]
    assert [s.threads for s in plan_slots(3, cpus=2)] == [1, 1, 1]       # never zero threads
    assert [s.gpu for s in plan_slots(2)] == [None, None]                 # no GPUs: inherit
    assert plan_slots(1, cpus=None)[0].threads is None
    with pytest.raises(PlacementError):
        plan_slots(0)


def test_a_slot_sets_its_gpu_and_every_thread_variable() -> None:
    env = Slot(1, "GPU-5c1e-aa", 3).environment({"PATH": "/bin", GPU_ENV: "0,1", "OMP_NUM_THREADS": "16"})
    assert env["PATH"] == "/bin" and env[GPU_ENV] == "GPU-5c1e-aa"
    assert {name: env[name] for name in THREAD_VARIABLES} == {name: "3" for name in THREAD_VARIABLES}
    assert Slot(0).environment({GPU_ENV: "0,1"}) == {GPU_ENV: "0,1"}


def test_gpu_lists() -> None:
    assert parse_gpus("0,1") == ["0", "1"] and parse_gpus(" 2 , 3,") == ["2", "3"]
    assert parse_gpus("") == [] and parse_gpus(None) == []
    assert parse_gpus("MIG-4b8d-9a") == ["MIG-4b8d-9a"]
    for bad in ("0,0", "0;rm -rf", "a b", "'0'"):
        with pytest.raises(PlacementError):
            parse_gpus(bad)


def test_thread_counts_come_from_slurm_then_the_affinity() -> None:
    assert available_cpus({"SLURM_CPUS_PER_TASK": "6"}) == 6
    assert available_cpus({"SLURM_CPUS_PER_TASK": "x"}) >= 1
    assert worker_threads({"BATCHSEG_THREADS": "3"}) == 3
    assert worker_threads({}) == available_cpus({})
