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
from typing import Callable

from ..config import Config, ConfigError, load_config
from ..errors import one_line


@dataclass
class LocalRun:
    started_at: float
    returncodes: list[int] = field(default_factory=list)


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


def run_local(config: Config, *, workers: int, limit: int | None = None,
              on_tick: Callable[[], None] | None = None, tick_seconds: float = 1.0) -> LocalRun:
    """Start the workers, call `on_tick` while they run, forward SIGINT/SIGTERM to them, wait for all."""
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    run = LocalRun(started_at=time.time())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    procs: list[subprocess.Popen[bytes]] = []
    quotas = [q for q in split_quota(limit, workers) if q != 0]
    for index, quota in enumerate(quotas):
        log_path = config.logs_dir / f"local-{stamp}-{os.getpid()}-w{index}.log"
        with log_path.open("ab") as log_file:
            procs.append(subprocess.Popen(worker_command(config, quota), stdout=log_file,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))

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

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
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
