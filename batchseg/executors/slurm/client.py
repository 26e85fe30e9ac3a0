"""Calling Slurm's client commands (sbatch, squeue, sacct, scontrol, scancel) and reading their timestamps.

Every call has a timeout and turns "not installed" or "no answer" into a `SlurmError`; the
array task's own question (when does my allocation end?) lives here too, since the worker asks it.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

COMMAND_TIMEOUT = 60                 # seconds for one Slurm client call


class SlurmError(RuntimeError):
    """Slurm refused or could not be asked, or a value cannot be put safely into a job script."""


def run_slurm(argv: Sequence[str], *, input: str | None = None, cwd: Path | None = None,
              timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """One Slurm client call, its output captured; SlurmError when the command is missing or does not answer."""
    try:
        return subprocess.run(list(argv), input=input, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: is Slurm installed here (or its module loaded)?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {timeout:.0f} s") from None


def parse_timestamp(text: str) -> float | None:
    """Slurm's local-time timestamps (2024-05-01T12:34:56) as epoch seconds; None for N/A, Unknown, NONE."""
    text = (text or "").strip()
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def allocation_deadline(environ: Mapping[str, str] | None = None) -> float | None:
    """Epoch seconds at which this Slurm job's time limit ends; None outside Slurm or unknown. Never raises."""
    env = os.environ if environ is None else environ
    job_id = env.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return None
    try:
        out = run_slurm(["squeue", "-h", "-j", job_id, "-o", "%e"], timeout=20)
        if out.returncode == 0:
            end = parse_timestamp(out.stdout.strip().splitlines()[0] if out.stdout.strip() else "")
            if end is not None:
                return end
        out = run_slurm(["scontrol", "show", "job", job_id], timeout=20)
        match = re.search(r"\bEndTime=(\S+)", out.stdout)
        return parse_timestamp(match.group(1)) if out.returncode == 0 and match else None
    except Exception:  # the worker must run on even when Slurm cannot be asked
        return None

