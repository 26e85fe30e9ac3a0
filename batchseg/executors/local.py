"""Run N worker processes on this machine: `batchseg run`, the embedded default.

Each process is `python -m batchseg work`, the same loop a Slurm array task
runs. The parent only starts, watches and stops them; the ledger is the only
shared state.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..config import Config, ConfigError, load_config
from ..errors import one_line
from ..placement import Slot, available_cpus, plan_slots

# What the group's parent passes on to every worker: Ctrl-C, scancel's and the time limit's
# TERM, and Slurm's early warning USR1 (which reaches only the batch shell, i.e. this parent).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


@dataclass
class LocalRun:
    started_at: float
    returncodes: list[int] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


def split_quota(limit: int | None, workers: int) -> list[int | None]:
    """Share a total study limit among workers as evenly as possible."""
    if limit is None:
        return [None] * workers
    base, extra = divmod(limit, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def worker_command(config: Config, max_studies: int | None = None, *, python: str | None = None) -> list[str]:
    """argv of one worker, `python -m batchseg work ...`: a local process and a Slurm task run the same.

    `python` is the interpreter: this one (sys.executable) by default, `python3` inside a container.
    """
    command = [python or sys.executable, "-m", "batchseg", "work", "--project", str(config.project_dir.resolve())]
    if config.db and config.db != _saved_db(config):
        # Only a --db override travels on the command line (and into job scripts and `ps`);
        # the project's own URL is read from batchseg.toml by the worker.
        command += ["--db", config.db]
    if max_studies is not None:
        command += ["--max-studies", str(max_studies)]
    return command


def _saved_db(config: Config) -> str:
    try:
        return load_config(config.project_dir).db
    except ConfigError:
        return ""


def group_exit_code(returncodes: Sequence[int]) -> int:
    """0 when every worker exited 0; else the first failure's code (128+N for a worker killed by signal N)."""
    for code in returncodes:
        if code != 0:
            return 128 - code if code < 0 else code
    return 0


def run_local(config: Config, *, workers: int, limit: int | None = None, gpus: Sequence[str] = (),
              on_tick: Callable[[], None] | None = None, tick_seconds: float = 1.0,
              log_stem: str | None = None, on_started: Callable[[LocalRun], None] | None = None) -> LocalRun:
    """Start the workers, call `on_tick` while they run, forward stop signals to them, wait for all.

    Workers are spread over `gpus` round robin and share this process's CPUs (placement.py).
    Each writes `logs/<log_stem>-w<i>.log` (default stem: local-<time>-<pid>).
    """
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    run = LocalRun(started_at=time.time())
    stem = log_stem or f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    procs: list[subprocess.Popen[bytes]] = []
    quotas = [q for q in split_quota(limit, workers) if q != 0]
    run.slots = plan_slots(len(quotas), gpus, available_cpus()) if quotas else []
    for slot, quota in zip(run.slots, quotas):
        log_path = config.logs_dir / f"{stem}-w{slot.index}.log"
        with log_path.open("ab") as log_file:
            procs.append(subprocess.Popen(worker_command(config, quota), stdout=log_file,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=slot.environment(os.environ)))
        run.pids.append(procs[-1].pid)
        run.logs.append(log_path)
    if on_started is not None:
        on_started(run)

    def forward(signum: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    tick_failed = False

    def tick() -> None:
        # on_tick only shows progress: if it breaks, the workers still need watching and
        # their signals forwarding, so say so once and keep waiting.
        nonlocal tick_failed
        if on_tick is None:
            return
        try:
            on_tick()
        except Exception as exc:  # noqa: BLE001 - any failure of a display callback
            if not tick_failed:
                tick_failed = True
                print(f"batchseg run: progress display failed, workers keep running: "
                      f"{one_line(f'{type(exc).__name__}: {exc}', 300)}", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, forward) for s in FORWARDED_SIGNALS}
    try:
        while any(p.poll() is None for p in procs):
            tick()
            time.sleep(tick_seconds)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    run.returncodes = [p.wait() for p in procs]
    tick()
    return run
