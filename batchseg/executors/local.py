"""Run N worker processes on this machine: `batchseg run`, the embedded default.

Each process is `python -m batchseg work`, the same loop a Slurm array task
runs. The parent starts, watches and stops them; the ledger is the only shared
state. A worker that dies (killed, crashed) while holding a study has that study
marked lost at once, and a replacement starts in its place (its GPU, its CPU share)
while work remains. A Slurm task with workers_per_task N runs the same group through
`batchseg work --workers N`.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import DB_ENV, Config, ConfigError, load_config, without_password
from ..errors import one_line
from ..placement import Slot, available_cpus, plan_slots

# What the group's parent passes on to every worker: Ctrl-C, scancel's and the time limit's
# TERM, and Slurm's early warning USR1 (which reaches only the batch shell, i.e. this parent).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)

# Exit statuses of `batchseg work` after which a replacement would only fail the same way.
NOT_REPLACED = {0: "finished", 2: "gave up on the ledger", 3: "cannot run the segmenter"}


@dataclass
class LocalRun:
    started_at: float
    returncodes: list[int] = field(default_factory=list)
    # Every worker process this run started, replacements included, in the order of returncodes.
    slots: list[Slot] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    interrupted: int | None = None       # the signal number that stopped the run, if one did
    replaced: int = 0                    # workers started in place of dead ones
    # Non-zero exits that nothing made good: not a dead worker whose study was marked lost or
    # which was replaced (those studies' states tell how the run went).
    failed_workers: list[int] = field(default_factory=list)


def split_quota(limit: int | None, workers: int) -> list[int | None]:
    """Share a total study limit among workers as evenly as possible."""
    if limit is None:
        return [None] * workers
    base, extra = divmod(limit, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def worker_command(config: Config, max_studies: int | None = None, *, python: str | None = None) -> list[str]:
    """argv of one worker, `python -m batchseg work ...`: a local process and a Slurm task run the same.

    `python` is the interpreter: this one (sys.executable) by default, `python3` inside a container.
    The database URL never travels here (argv shows in `ps` and in job scripts): the worker reads
    the project's from batchseg.toml, and an override from worker_environment().
    """
    command = [python or sys.executable, "-m", "batchseg", "work", "--project", str(config.project_dir.resolve())]
    if max_studies is not None:
        command += ["--max-studies", str(max_studies)]
    return command


def worker_environment(config: Config) -> dict[str, str]:
    """Variables a worker needs besides the inherited environment (locally and in a Slurm task).

    PYTHONSAFEPATH keeps `python -m batchseg` from importing a `batchseg/` folder that happens to
    sit in the current directory (Python 3.11+; 3.10 ignores it). A --db override goes in
    BATCHSEG_DB without its password: workers find that in ~/.pgpass (or $PGPASSWORD).
    """
    env = {"PYTHONSAFEPATH": "1"}
    if config.db and config.db != _saved_db(config):
        env[DB_ENV] = without_password(config.db)
    return env


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


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


class _Supervisor:
    """The run's workers: start, watch, replace the dead, forward stop signals."""

    def __init__(self, config: Config, ledger: Any, on_event: Callable[[str], None], log_stem: str) -> None:
        self.config, self.ledger, self.on_event = config, ledger, on_event
        self.log_stem = log_stem
        self.env = {**os.environ, **worker_environment(config)}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.slots: list[Slot] = []          # each process's GPU and CPU share, in the order of procs
        self.logs: list[Path] = []
        self.quotas: dict[int, int | None] = {}
        self.seen_exit: set[int] = set()
        self.host = socket.gethostname()
        self.stopping: int | None = None
        self.replaced = 0
        self.made_good: set[int] = set()     # pids of dead workers whose study was marked lost or replaced
        self.started_at = time.time()

    def start(self, quota: int | None, slot: Slot) -> subprocess.Popen[bytes]:
        log_path = self.config.logs_dir / f"{self.log_stem}-w{len(self.procs)}.log"
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(worker_command(self.config, quota), stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=slot.environment(self.env))
        self.procs.append(proc)
        self.slots.append(slot)
        self.logs.append(log_path)
        self.quotas[proc.pid] = quota
        return proc

    def forward(self, signum: int, _frame: object) -> None:
        self.stopping = signum
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def check_exits(self) -> None:
        for index, proc in enumerate(list(self.procs)):
            code = proc.poll()
            if code is None or proc.pid in self.seen_exit:
                continue
            self.seen_exit.add(proc.pid)
            if code == 0:
                continue
            held = self._mark_lost(proc.pid, code)
            why = f"worker pid {proc.pid} {describe_exit(code)}"
            if held:
                self.made_good.add(proc.pid)
                self.on_event(f"{why} holding study {', '.join(held)}: marked lost (worker.lost)")
            quota = self._remaining_quota(proc.pid, held) if self.stopping is None else 0
            if quota != 0 and self._should_replace(code, held):
                replacement = self.start(quota, self.slots[index])   # the dead worker's GPU and CPU share
                self.replaced += 1
                self.made_good.add(proc.pid)
                self.on_event(f"{why}: started worker pid {replacement.pid} in its place")
            elif not held:
                self.on_event(f"{why}; see its log in {self.config.logs_dir}")

    def _mark_lost(self, pid: int, code: int) -> list[str]:
        """Studies the dead worker held: lost now, not when their lease runs out."""
        try:
            held = [a for a in self.ledger.running() if a.worker.pid == pid and a.worker.host == self.host]
            return [a.study_id for a in held
                    if self.ledger.mark_lost(a.study_id, a.token, f"local worker pid {pid} {describe_exit(code)} "
                                                                 "while holding the study")]
        except Exception as exc:  # noqa: BLE001 - an unreachable ledger: the lease will tell later
            self.on_event(f"cannot mark the studies of worker pid {pid} lost: {one_line(exc, 200)}")
            return []

    def _should_replace(self, code: int, held: list[str]) -> bool:
        # A worker that died holding no study and not by a signal (a crash at start-up) would die again.
        if code in NOT_REPLACED or not (held or code < 0):
            return False
        try:
            states = self.ledger.states()
        except Exception:  # noqa: BLE001
            return False
        return states["pending"] > 0

    def _remaining_quota(self, pid: int, held: list[str]) -> int | None:
        """What a replacement may still take of the dead worker's --limit share (None: no limit)."""
        quota = self.quotas.get(pid)
        if quota is None:
            return None
        try:
            claims = self.ledger.claims_by(self.host, pid, self.started_at)
        except Exception:  # noqa: BLE001 - an unreachable ledger: no replacement rather than too many
            return 0
        # The dead worker's quota less what it finished; the lost study was not finished.
        return max(0, quota - max(0, claims - len(held)))


def run_local(config: Config, *, workers: int, limit: int | None = None, gpus: Sequence[str] = (),
              on_tick: Callable[[], None] | None = None, tick_seconds: float = 1.0,
              on_event: Callable[[str], None] | None = None, ledger: Any = None,
              log_stem: str | None = None, on_started: Callable[[LocalRun], None] | None = None) -> LocalRun:
    """Start the workers, call `on_tick` while they run, forward stop signals to them, wait for all.

    Workers are spread over `gpus` round robin and share this process's CPUs (placement.py); a
    replacement takes the dead worker's place. Each process writes `logs/<log_stem>-w<i>.log`
    (default stem: local-<time>-<pid>). `on_event` gets one line per dead worker (and its
    replacement); `on_started` gets the run once the first workers are started.
    """
    from ..ledger import Ledger

    config.logs_dir.mkdir(parents=True, exist_ok=True)
    own_ledger = ledger is None
    ledger = Ledger.for_config(config) if own_ledger else ledger
    run = LocalRun(started_at=time.time())
    stem = log_stem or f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    supervisor = _Supervisor(config, ledger, on_event or (lambda line: print(line, file=sys.stderr, flush=True)),
                             stem)
    quotas = [q for q in split_quota(limit, workers) if q != 0]
    for slot, quota in zip(plan_slots(len(quotas), gpus, available_cpus()) if quotas else [], quotas):
        supervisor.start(quota, slot)
    run.slots, run.pids, run.logs = supervisor.slots, [p.pid for p in supervisor.procs], supervisor.logs
    if on_started is not None:
        on_started(run)

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

    previous = {s: signal.signal(s, supervisor.forward) for s in FORWARDED_SIGNALS}
    try:
        while True:
            supervisor.check_exits()   # may start a replacement: check before deciding it is over
            if not supervisor.alive():
                break
            tick()
            time.sleep(tick_seconds)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if own_ledger:
            ledger.close()
    run.returncodes = [p.wait() for p in supervisor.procs]
    run.pids = [p.pid for p in supervisor.procs]
    run.failed_workers = [p.returncode for p in supervisor.procs
                          if p.returncode != 0 and p.pid not in supervisor.made_good]
    run.interrupted = supervisor.stopping
    run.replaced = supervisor.replaced
    tick()
    return run
