"""Fixtures shared across the suite: small synthetic datasets and projects."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # The SPINEPS tests skip where the extra is not installed; where the suite promises it
    # (scripts/check), a broken install must fail loudly instead of skipping quietly.
    if os.environ.get("BATCHSEG_REQUIRE_SPINEPS"):
        try:
            import spineps  # noqa: F401
        except Exception as exc:
            raise pytest.UsageError(f"BATCHSEG_REQUIRE_SPINEPS is set but spineps does not import: {exc}") from exc


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 studies (4 variants + 1 more + 3 broken) at a small matrix: the dataset of most tests."""
    from batchseg.synth import synth_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    synth_dataset(root, 8, seed=1, matrix=96)
    return root


def batchseg(*args: str, check: bool = True, env: dict[str, str] | None = None,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process, as a user would."""
    result = subprocess.run([sys.executable, "-m", "batchseg", *args], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"batchseg {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def status_json(project: Path) -> dict[str, Any]:
    return json.loads(batchseg("status", "--project", str(project), "--json").stdout)


def set_config(project: Path, **values: Any) -> None:
    """Change top-level keys of a project's batchseg.toml through the config module."""
    from batchseg.config import load_config, write_config

    config = load_config(project)
    for key, value in values.items():
        setattr(config, key, value)
    write_config(config)


def noop_project(root: Path, studies: int, *, seed: int, **config: Any) -> Path:
    """A project over `studies` good synthetic studies with the no-op segmenter, config keys set as given."""
    from batchseg.synth import synth_dataset

    data = root / "data"
    synth_dataset(data, studies, seed=seed, matrix=64, broken=False)
    project = root / "p"
    batchseg("init", "--project", str(project), "--dataset", str(data), "--segmenter", "noop")
    if config:
        set_config(project, **config)
    return project
