"""tests/slurm runs against a real Slurm (scripts/local-slurm.sh gives a one-node cluster).

Skipped only when there is no `sbatch` on PATH and BATCHSEG_REQUIRE_SLURM is unset; CI sets
it, so there a missing Slurm fails instead. When sbatch exists but no controller answers,
the session starts our local cluster (as root) and stops it again at the end.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from batchseg.config import Config, load_config, write_config
from batchseg.ledger import Ledger
from tests.helpers import wait_until  # noqa: F401 - the slurm tests import it from here

REPO = Path(__file__).resolve().parents[2]
LOCAL_SLURM = REPO / "scripts" / "local-slurm.sh"
HAVE_SBATCH = shutil.which("sbatch") is not None
REQUIRED = bool(os.environ.get("BATCHSEG_REQUIRE_SLURM"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if "tests/slurm/" in str(item.fspath).replace(os.sep, "/")]
    for item in mine:
        item.add_marker(pytest.mark.slurm)
    if HAVE_SBATCH or REQUIRED:
        return
    skip = pytest.mark.skip(reason="no Slurm here (no sbatch): run `bash scripts/local-slurm.sh start`")
    for item in mine:
        item.add_marker(skip)


def controller_up() -> bool:
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "is UP" in out.stdout


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> Iterator[None]:
    """A Slurm controller that answers; started from scripts/local-slurm.sh when none does."""
    started = False
    if not controller_up():
        env_file = subprocess.run(["bash", str(LOCAL_SLURM), "env"], capture_output=True, text=True).stdout
        conf = env_file.strip().split("=", 1)[-1].strip("'\"")
        if conf and Path(conf).exists():
            os.environ["SLURM_CONF"] = conf
    if not controller_up():
        if os.geteuid() != 0:
            pytest.fail("no Slurm controller answers and we are not root: run `sudo bash scripts/local-slurm.sh start`")
        out = subprocess.run(["bash", str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"local-slurm.sh start failed:\n{out.stderr}"
        env_path = Path(out.stdout.strip().splitlines()[-1])
        os.environ["SLURM_CONF"] = env_path.read_text().strip().split("=", 1)[1].strip("'\"")
        started = True
        assert controller_up()
    yield
    if started:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop"], capture_output=True, text=True, timeout=120)


# -- asking Slurm, for the tests ----------------------------------------------------------------

def squeue_tasks(job_ids: list[str], states: str = "all") -> list[tuple[str, str]]:
    """[(label like 21_3, state)] of these jobs' tasks."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", states, "-j", ",".join(job_ids), "-o", "%i|%T"],
                         capture_output=True, text=True, timeout=30)
    return [tuple(line.split("|", 1)) for line in out.stdout.split()]  # type: ignore[misc]


def active(job_ids: list[str]) -> list[tuple[str, str]]:
    return [t for t in squeue_tasks(job_ids)
            if t[1] in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED")]


def wait_gone(job_ids: list[str], timeout: float) -> None:
    wait_until(lambda: not active(job_ids), timeout, what=f"jobs {job_ids} to end")


def task_state(label: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", label], capture_output=True, text=True, timeout=30).stdout
    for word in out.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return ""


# -- projects -----------------------------------------------------------------------------------

@dataclass
class Project:
    config: Config
    ledger: Ledger
    good: list[str]                     # study ids that must end done

    def reload(self) -> Config:
        self.config = load_config(self.config.project_dir)
        return self.config


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[Callable[..., Project]]:
    """A synthetic dataset, `batchseg init` with the noop segmenter, Slurm settings for this cluster."""
    from batchseg.synth import synth_dataset
    from tests.conftest import batchseg

    made: list[Project] = []

    def make(studies: int = 3, delay: float = 0.0, name: str = "proj", **slurm: Any) -> Project:
        data = tmp_path / f"data-{name}"
        manifest = synth_dataset(data, studies, seed=7, matrix=64, broken=False)
        project_dir = tmp_path / name
        batchseg("init", "--project", str(project_dir), "--dataset", str(data), "--segmenter", "noop")
        config = load_config(project_dir)
        config.segmenter_options = {"delay": delay}
        config.heartbeat_seconds, config.lease_seconds = 2, 120
        # what this cluster can give: 8 CPUs, 8000 MB, 2 (fake) GPUs
        config.slurm.mem, config.slurm.cpus_per_task, config.slurm.gres, config.slurm.time = "200M", 1, "", "5"
        for key, value in slurm.items():
            setattr(config.slurm, key, value)
        write_config(config)
        project = Project(config, Ledger.for_config(config), [str(s.study_id) for s in manifest.studies])
        made.append(project)
        return project

    yield make
    for project in made:
        ids = [str(s["job_id"]) for s in project.ledger.submissions()]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
        project.ledger.close()


def outputs_are_clean(config: Config, done: list[str]) -> None:
    """Nothing half-written: staging is empty, and every study's outputs are all there or absent."""
    out = config.out_dir
    staging = out / ".staging"
    assert not staging.exists() or not any(staging.iterdir()), f"left in staging: {list(staging.iterdir())}"
    for sid in done:
        metadata = out / "metadata" / f"{sid}_metadata.json"
        assert metadata.is_file(), f"study {sid} has no metadata"
        assert (out / "centroids" / f"{sid}_centroids.json").is_file()
        assert (out / "segmentations" / f"{sid}_seg-vert_msk.nii.gz").is_file()
    for path in out.rglob("*"):
        if path.is_file() and path.parent != out / ".locks":   # publish locks: results/.locks/<study>.lock
            assert any(path.name.startswith(f"{sid}_") for sid in done), f"stray output {path}"
