"""The container prefix inside a real Slurm job, through a stub `apptainer` (none can be installed here).

The stub records its argv and then does what `apptainer exec` would do with it: run the
command after the image name (the image's `python3` being this test's interpreter).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from batchseg.config import write_config
from batchseg.executors.slurm import submit_array
from tests.slurm.conftest import REPO, outputs_are_clean, wait_gone

IMAGE = "/images/batchseg spineps.sif"

STUB = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_APPTAINER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
assert args[0] == "exec", args
rest = args[args.index(os.environ["STUB_APPTAINER_IMAGE"]) + 1:]
if rest[0] == "python3":
    rest[0] = sys.executable
os.environ["PYTHONPATH"] = {str(REPO)!r}
os.execv(rest[0], rest)
"""


def test_task_runs_through_the_container_runtime(make_project, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(STUB)
    (bin_dir / "apptainer").chmod(0o755)
    log = tmp_path / "apptainer-calls.jsonl"
    # sbatch hands the submitting environment to the job (--export=ALL)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_APPTAINER_LOG", str(log))
    monkeypatch.setenv("STUB_APPTAINER_IMAGE", IMAGE)

    project = make_project(studies=3, gres="gpu:1")
    config = project.config
    config.container.runtime, config.container.image = "apptainer", IMAGE
    config.container.binds = ["/scratch:/scratch:ro"]
    write_config(config)
    config = project.reload()

    result = submit_array(config, project.ledger, tasks=2)
    wait_gone(result.job_ids, 90)

    assert project.ledger.summary()["states"]["done"] == 3
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2                            # one per array task
    project_dir = str(config.project_dir.resolve())
    binds = ",".join([project_dir, str(config.dataset_dir.resolve()), str(config.out_dir.resolve()),
                      "/scratch:/scratch:ro"])
    expected = ["exec", "--nv", "--bind", binds, IMAGE, "python3", "-m", "batchseg", "work",
                "--project", project_dir]
    assert calls == [expected, expected]
    claims = [e for e in project.ledger.history() if e["event"] == "claimed"]
    assert claims and all(e["slurm_array_job_id"] == result.job_ids[0] for e in claims)
    assert all(e["cuda_visible_devices"] in {"0", "1"} for e in claims)
    outputs_are_clean(config, project.good)
