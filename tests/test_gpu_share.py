"""Workers per GPU: the derivation (placement.py) and what `submit` says from a project's timings."""
from __future__ import annotations

from pathlib import Path

import pytest

from batchseg.config import load_config
from batchseg.executors.slurm.job_script import effective_slurm
from batchseg.executors.slurm.submit import gpu_advice
from batchseg.ledger import Ledger, WorkerInfo
from batchseg.placement import (best_share, gpus_in_gres, predict_gpu_share, split_study_seconds)
from tests.conftest import noop_project


def test_busy_fraction_and_throughput_follow_the_overlap() -> None:
    # 30 s of CPU work and 10 s on the GPU per study: one worker keeps the GPU 25 % busy
    rows = predict_gpu_share(30.0, 10.0, worker_memory_mb=20_000, gpu_memory_mb=70_000)
    assert [round(r.busy_fraction, 3) for r in rows] == [0.25, 0.5, 0.75, 1.0]
    assert [round(r.studies_per_hour) for r in rows] == [90, 180, 270, 360]      # 4 workers: the GPU's 360/h
    assert [r.fits for r in rows] == [True, True, True, False]                   # 4 x 20 GB > 70 GB
    best = best_share(rows)
    assert best.workers_per_gpu == 3 and best.busy_fraction == pytest.approx(0.75)
    assert best_share(predict_gpu_share(10.0, 10.0)).workers_per_gpu == 2        # 100 % at two
    assert predict_gpu_share(5.0, 10.0)[0].studies_per_hour == pytest.approx(240)


def test_gres_gpu_counts_and_study_splits() -> None:
    assert [gpus_in_gres(g) for g in ("gpu:2", "gpu:a100:2", "gpu", "", "shard:2", "tmp:9,gpu:4")] == [2, 2, 1, 0, 0, 4]
    timings = {"total": 40.0, "segment.net_semantic": 6.0, "segment.net_instance": 3.0, "segment.net_labeling": 1.0}
    assert split_study_seconds(timings) == (30.0, 10.0)
    assert split_study_seconds({"total": 5.0, "segment": 4.0}) is None         # a segmenter without networks


def _finish(ledger: Ledger, timings: dict[str, float]) -> None:
    claim = ledger.claim(WorkerInfo.from_environment({}), 60)
    assert claim is not None and ledger.complete(claim, {}, timings)


def test_submit_advice_from_the_projects_own_timings(tmp_path: Path) -> None:
    config = load_config(noop_project(tmp_path, 4, seed=2))
    slurm = effective_slurm(config, {"gres": "gpu:2", "cpus_per_task": 4, "workers_per_task": 2})
    ledger = Ledger.for_config(config)
    try:
        assert gpu_advice(effective_slurm(config, {"gres": ""}), ledger) == []
        before = gpu_advice(slurm, ledger)
        assert before[0] == "each task: 2 worker(s) over 2 GPU(s), 2 CPU thread(s) per worker"
        assert "leaves it idle" in before[1]
        for total in (38.0, 40.0, 42.0):       # what the SPINEPS segmenter records (segment.net_*)
            _finish(ledger, {"total": total, "segment.net_semantic": 7.0, "segment.net_instance": 2.0,
                             "segment.net_labeling": 1.0})
        after = gpu_advice(slurm, ledger)
    finally:
        ledger.close()
    assert "median of 3): 30.0 s CPU work and 10.0 s in the networks" in after[1]
    assert "4 worker(s) per GPU keep a GPU ~100% busy, this submission's 1 ~25%" in after[1]
    assert after[2] == "suggest: --workers-per-task 8 --cpus-per-task 16 (2 CPU thread(s) per worker, as now)"
