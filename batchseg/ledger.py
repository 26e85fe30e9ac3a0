"""The ledger: SQLAlchemy Core tables and the study state machine.

States (docs/architecture.md, "Study states"): pending -> running -> done |
failed; running -> pending on a retryable error, an expired lease, a lost Slurm
task or a graceful release; failed -> pending only by retry_failed; skipped for
studies that cannot be processed by design. Every transition appends a row to `history`; nothing is
ever deleted.

A claim is one UPDATE ... WHERE study_id = (SELECT ... LIMIT 1) RETURNING
statement that hands out a fresh token; every later write of that attempt is
fenced by the token, so a worker whose lease was taken over changes nothing.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import statistics
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import (
    bindparam,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url

from .errors import is_retryable, one_line

SCHEMA_VERSION = 1
READ_ONLY = "batchseg_read_only"   # execution option: begin a plain (deferred) transaction on SQLite
STATES = ("pending", "running", "done", "failed", "skipped")
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "fuse.ceph",
                       "fuse.beegfs", "panfs", "fuse.sshfs"}

metadata = MetaData()

studies = Table(
    "studies",
    metadata,
    # Text ids: RSNA series ids exceed 2**31 and ids are never computed with.
    Column("study_id", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),                # claim order
    Column("series_id", String(32)),
    Column("series_description", Text),
    Column("selection_reason", Text),
    Column("input_path", Text),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("token", String(36)),
    Column("claimed_at", Float),
    Column("heartbeat_at", Float),
    Column("lease_expires_at", Float),
    Column("worker_host", Text),
    Column("worker_pid", Integer),
    Column("slurm_job_id", String(32)),
    Column("slurm_array_job_id", String(32)),
    Column("slurm_array_task_id", String(16)),
    Column("slurm_restart_count", Integer),
    Column("error_class", String(64)),
    Column("error_message", Text),
    Column("log_path", Text),
    Column("timings", Text),                               # JSON: seconds per stage of the last done attempt
    Column("outputs", Text),                               # JSON: output name -> path
    Column("added_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
)
Index("ix_studies_state_seq", studies.c.state, studies.c.seq)

history = Table(
    "history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_id", String(64), nullable=False, index=True),
    Column("token", String(36)),
    Column("event", String(16), nullable=False),   # added claimed done failed retry released lost skipped reset
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("host", Text),
    Column("pid", Integer),
    Column("slurm_job_id", String(32)),
    Column("slurm_array_job_id", String(32)),
    Column("slurm_array_task_id", String(16)),
    Column("slurm_restart_count", Integer),
    Column("cuda_visible_devices", Text),
    Column("error_class", String(64)),
    Column("message", Text),
    Column("duration", Float),                     # seconds from claim to this outcome
)

submissions = Table(
    "submissions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("array_spec", Text),
    Column("tasks", Integer),
    Column("pending", Integer),
    Column("script", Text),
    Column("submitted_at", Float, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


# The hot path's statements are built once: constructing SQLAlchemy statements per call cost
# more than executing them (benchmarks/ledger.py). Parameters are p_* so they never shadow columns.
_NEXT_PENDING = (
    select(studies.c.study_id)
    .where(studies.c.state == "pending")
    .order_by(studies.c.seq)
    .limit(1)
    .with_for_update(skip_locked=True)   # PostgreSQL; SQLite holds the write lock already
    .scalar_subquery()
)
CLAIM = (
    update(studies)
    .where(studies.c.study_id == _NEXT_PENDING, studies.c.state == "pending")
    .values(
        state="running", token=bindparam("p_token"), attempts=studies.c.attempts + 1,
        claimed_at=bindparam("p_now"), heartbeat_at=bindparam("p_now"), lease_expires_at=bindparam("p_expires"),
        worker_host=bindparam("p_host"), worker_pid=bindparam("p_pid"), slurm_job_id=bindparam("p_job"),
        slurm_array_job_id=bindparam("p_array_job"), slurm_array_task_id=bindparam("p_array_task"),
        slurm_restart_count=bindparam("p_restarts"), error_class=None, error_message=None, log_path=None, updated_at=bindparam("p_now"),
    )
    .returning(studies.c.study_id, studies.c.attempts, studies.c.series_id, studies.c.input_path)
)
_HELD = (studies.c.study_id == bindparam("p_study"), studies.c.token == bindparam("p_token"),
         studies.c.state == "running")
HEARTBEAT = update(studies).where(*_HELD).values(heartbeat_at=bindparam("p_now"),
                                                  lease_expires_at=bindparam("p_expires"))
COMPLETE = update(studies).where(*_HELD).values(
    state="done", token=None, lease_expires_at=None, finished_at=bindparam("p_now"), updated_at=bindparam("p_now"),
    outputs=bindparam("p_outputs"), timings=bindparam("p_timings"))
EXPIRED = select(studies.c.study_id, studies.c.token).where(
    studies.c.state == "running", studies.c.lease_expires_at < bindparam("p_now"))
ADD_HISTORY = insert(history)


@dataclass
class WorkerInfo:
    """Who holds a claim: recorded on the study row and in every history row."""

    host: str
    pid: int
    slurm_job_id: str | None = None
    slurm_array_job_id: str | None = None
    slurm_array_task_id: str | None = None
    slurm_restart_count: int | None = None
    cuda_visible_devices: str | None = None

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> "WorkerInfo":
        env = os.environ if environ is None else environ
        restarts = env.get("SLURM_RESTART_COUNT")
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            slurm_job_id=env.get("SLURM_JOB_ID"),
            slurm_array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
            slurm_array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
            # Slurm sets SLURM_RESTART_COUNT only after a requeue: inside a job, absent means 0.
            slurm_restart_count=int(restarts) if restarts and restarts.isdigit() else (
                0 if env.get("SLURM_JOB_ID") else None),
            cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
        )

    def history_columns(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, **{k: v for k, v in asdict(self).items() if k.startswith(("slurm", "cuda"))}}


@dataclass
class StudyRow:
    """One study as `init` found it in the dataset."""

    study_id: str
    series_id: str | None = None
    series_description: str | None = None
    input_path: str | None = None
    selection_reason: str | None = None
    skip_class: str | None = None      # set: the study is recorded as skipped
    skip_message: str | None = None


@dataclass
class Claim:
    study_id: str
    token: str
    attempt: int
    series_id: str | None
    input_path: str | None
    claimed_at: float
    worker: WorkerInfo


@dataclass
class RunningAttempt:
    study_id: str
    token: str
    attempt: int
    worker: WorkerInfo
    claimed_at: float
    heartbeat_at: float | None
    lease_expires_at: float


@dataclass
class AddResult:
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path`, from /proc/mounts (longest mount point wins)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    target = str(Path(path).resolve())
    best, fstype = "", "unknown"
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


def _sqlite_engine(url: str) -> tuple[Engine, bool]:
    if sqlite3.sqlite_version_info < (3, 35):
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old for the ledger (claims need 3.35's "
                           "UPDATE ... RETURNING): use a Python built with a newer SQLite, or a PostgreSQL --db URL")
    database = make_url(url).database or ""
    on_network = bool(database) and database != ":memory:" and (
        filesystem_type(Path(database).parent) in NETWORK_FILESYSTEMS)
    if on_network:
        warnings.warn(
            f"the ledger {database} is on a network filesystem: using a rollback journal and long lock waits; "
            "for large arrays point --db at a PostgreSQL URL", stacklevel=3)
    # A long busy timeout: many array tasks claim at once, and waiting beats failing.
    engine = create_engine(url, connect_args={"timeout": 300 if on_network else 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN IMMEDIATE itself: the write lock is
        # taken up front, so a claim's read and write cannot interleave with another's.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if on_network:
            # WAL needs shared memory, which network filesystems do not provide.
            cursor.execute("PRAGMA journal_mode=DELETE")
            cursor.execute("PRAGMA synchronous=FULL")
        else:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Reads need no write lock: status, report and heartbeat-free reads must not queue behind claims.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine, on_network


def _engine(url: str) -> tuple[str, Engine, bool]:
    """(dialect, engine, on a network filesystem) for a URL; a URL that cannot work is one RuntimeError line."""
    from sqlalchemy.exc import ArgumentError

    kind = ""
    try:
        parsed = make_url(url)
        kind = parsed.drivername
        if parsed.get_backend_name() == "sqlite":
            return "sqlite", *_sqlite_engine(url)
        return parsed.get_backend_name(), create_engine(url, pool_pre_ping=True), False
    except ImportError as exc:
        hint = (" (pip install 'batchseg[pg]')" if kind == "postgresql+psycopg" else
                "; batchseg's extra 'pg' installs psycopg 3: use postgresql+psycopg://..." if kind.startswith("postgresql")
                else "")
        raise RuntimeError(f"the database URL asks for {kind!r}, whose Python driver is not installed: "
                           f"{exc}{hint}") from None
    except (ArgumentError, ValueError) as exc:
        # The URL itself stays out of the message: it may hold a password.
        raise RuntimeError(f"not a usable database URL: {one_line(exc, 200)}") from None


class Ledger:
    """The study ledger behind one SQLAlchemy URL (SQLite by default, PostgreSQL by option)."""

    def __init__(self, url: str, *, max_attempts: int = 3) -> None:
        self.url = url
        self.max_attempts = max_attempts
        self.dialect, self.engine, self.on_network_fs = _engine(url)
        self.reader = self.engine.execution_options(**{READ_ONLY: True})
        self._create()

    @classmethod
    def for_config(cls, config: Any) -> "Ledger":
        return cls(config.db_url, max_attempts=config.max_attempts)

    def close(self) -> None:
        self.engine.dispose()

    def _create(self) -> None:
        version = self._schema_version(self.reader)
        if version is None:  # a new ledger: only then take the write lock
            with self.engine.begin() as conn:
                metadata.create_all(conn)
                if conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar() is None:
                    conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(version) > SCHEMA_VERSION:
            raise RuntimeError(f"the ledger has schema {version}; this batchseg knows up to {SCHEMA_VERSION}: "
                               "upgrade batchseg")

    @staticmethod
    def _schema_version(engine: Engine) -> str | None:
        with engine.begin() as conn:
            if not inspect(conn).has_table("meta"):
                return None
            return conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()

    # -- filling ---------------------------------------------------------------------------------

    def add_studies(self, rows: Iterable[StudyRow]) -> AddResult:
        """Add new studies; existing ones keep their state and history."""
        result = AddResult()
        now = time.time()
        with self.engine.begin() as conn:
            known = set(conn.execute(select(studies.c.study_id)).scalars())
            seq = conn.execute(select(func.coalesce(func.max(studies.c.seq), 0))).scalar_one()
            new_rows, events = [], []
            for row in rows:
                if row.study_id in known:
                    result.existing.append(row.study_id)
                    continue
                known.add(row.study_id)
                seq += 1
                state = "skipped" if row.skip_class else "pending"
                new_rows.append({
                    "study_id": row.study_id, "seq": seq, "series_id": row.series_id,
                    "series_description": row.series_description, "selection_reason": row.selection_reason,
                    "input_path": row.input_path, "state": state, "attempts": 0,
                    "error_class": row.skip_class, "error_message": row.skip_message,
                    "added_at": now, "updated_at": now,
                })
                events.append({"study_id": row.study_id, "event": "added", "from_state": None, "to_state": state,
                               "at": now, "error_class": row.skip_class, "message": row.skip_message})
                result.added.append(row.study_id)
            if new_rows:
                conn.execute(insert(studies), new_rows)
                conn.execute(insert(history), events)
        return result

    def requeue_skipped(self, rows: Iterable[StudyRow]) -> list[str]:
        """Skipped studies that the dataset can now serve (their row is no longer skipped) go to pending."""
        now = time.time()
        fixed = {r.study_id: r for r in rows if not r.skip_class}
        moved: list[str] = []
        with self.engine.begin() as conn:
            skipped = conn.execute(select(studies.c.study_id, studies.c.error_class)
                                   .where(studies.c.state == "skipped")).all()
            for study_id, error_class in skipped:
                row = fixed.get(study_id)
                if row is None:
                    continue
                conn.execute(update(studies).where(studies.c.study_id == study_id, studies.c.state == "skipped")
                             .values(state="pending", series_id=row.series_id, input_path=row.input_path,
                                     series_description=row.series_description,
                                     selection_reason=row.selection_reason, error_class=None, error_message=None,
                                     updated_at=now))
                conn.execute(ADD_HISTORY, {"study_id": study_id, "event": "reset", "from_state": "skipped",
                                           "to_state": "pending", "at": now, "error_class": error_class,
                                           "message": "init --recheck-skipped: the dataset now has its series"})
                moved.append(study_id)
        return moved

    # -- the attempt life cycle ------------------------------------------------------------------

    def claim(self, worker: WorkerInfo, lease_seconds: float) -> Claim | None:
        """Claim the next pending study, or None when nothing is pending."""
        now = time.time()
        token = uuid.uuid4().hex
        with self.engine.begin() as conn:
            self._expire_leases(conn, now)
            row = conn.execute(CLAIM, {
                "p_token": token, "p_now": now, "p_expires": now + lease_seconds, "p_host": worker.host,
                "p_pid": worker.pid, "p_job": worker.slurm_job_id, "p_array_job": worker.slurm_array_job_id,
                "p_array_task": worker.slurm_array_task_id, "p_restarts": worker.slurm_restart_count}).first()
            if row is None:
                return None
            conn.execute(ADD_HISTORY, {
                "study_id": row.study_id, "token": token, "event": "claimed", "from_state": "pending",
                "to_state": "running", "at": now, **worker.history_columns()})
        return Claim(row.study_id, token, row.attempts, row.series_id, row.input_path, now, worker)

    def _expire_leases(self, conn: Connection, now: float) -> list[str]:
        expired = conn.execute(EXPIRED, {"p_now": now}).all()
        return [sid for sid, token in expired
                if self._end_attempt(conn, sid, token, "lost", "worker.lost",
                                     "lease expired: the worker stopped sending heartbeats", now)]

    def expire_leases(self) -> list[str]:
        """Send studies whose lease ran out back to the queue (or to failed); returns their ids."""
        with self.engine.begin() as conn:
            return self._expire_leases(conn, time.time())

    def heartbeat(self, claim: Claim, lease_seconds: float) -> bool:
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(HEARTBEAT, {"p_study": claim.study_id, "p_token": claim.token, "p_now": now,
                                              "p_expires": now + lease_seconds})
            return result.rowcount == 1

    def complete(self, claim: Claim, outputs: dict[str, str], timings: dict[str, float]) -> bool:
        now = time.time()
        with self.engine.begin() as conn:
            done = conn.execute(COMPLETE, {
                "p_study": claim.study_id, "p_token": claim.token, "p_now": now,
                "p_outputs": json.dumps(outputs), "p_timings": json.dumps(timings)}).rowcount == 1
            if done:
                conn.execute(ADD_HISTORY, {
                    "study_id": claim.study_id, "token": claim.token, "event": "done", "from_state": "running",
                    "to_state": "done", "at": now, "duration": now - claim.claimed_at,
                    **claim.worker.history_columns()})
        return done

    def fail(self, claim: Claim, error_class: str, message: str, log_path: str | None = None) -> str:
        """Record a failed attempt. Returns the new state ('pending' or 'failed'), or '' if the token was stale."""
        with self.engine.begin() as conn:
            return self._end_attempt(conn, claim.study_id, claim.token, "failed", error_class, message,
                                     time.time(), log_path=log_path, worker=claim.worker)

    def mark_lost(self, study_id: str, token: str, message: str, error_class: str = "worker.lost") -> str:
        """The worker holding this attempt is gone (Slurm says so): charge the attempt and requeue or fail."""
        with self.engine.begin() as conn:
            return self._end_attempt(conn, study_id, token, "lost", error_class, message, time.time())

    def release(self, claim: Claim, reason: str) -> bool:
        """Give the study back without charging the attempt (signal, time budget)."""
        now = time.time()
        with self.engine.begin() as conn:
            released = conn.execute(
                update(studies)
                .where(studies.c.study_id == claim.study_id, studies.c.token == claim.token,
                       studies.c.state == "running")
                .values(state="pending", token=None, lease_expires_at=None, attempts=studies.c.attempts - 1,
                        updated_at=now)
            ).rowcount == 1
            if released:
                conn.execute(insert(history).values(
                    study_id=claim.study_id, token=claim.token, event="released", from_state="running",
                    to_state="pending", at=now, message=one_line(reason), duration=now - claim.claimed_at,
                    **claim.worker.history_columns()))
        return released

    def _end_attempt(self, conn: Connection, study_id: str, token: str, event_name: str, error_class: str,
                     message: str, now: float, *, log_path: str | None = None,
                     worker: WorkerInfo | None = None) -> str:
        row = conn.execute(
            select(studies.c.attempts, studies.c.claimed_at, studies.c.worker_host, studies.c.worker_pid,
                   studies.c.slurm_job_id, studies.c.slurm_array_job_id, studies.c.slurm_array_task_id,
                   studies.c.slurm_restart_count)
            .where(studies.c.study_id == study_id, studies.c.token == token, studies.c.state == "running")
            .with_for_update()  # PostgreSQL: a racing fail/lost on the same attempt waits, then finds nothing
        ).first()
        if row is None:
            return ""
        retry = is_retryable(error_class) and row.attempts < self.max_attempts
        new_state = "pending" if retry else "failed"
        message = one_line(message)
        values: dict[str, Any] = dict(state=new_state, token=None, lease_expires_at=None, error_class=error_class,
                                      error_message=message, log_path=log_path, updated_at=now,
                                      finished_at=None if retry else now)
        if retry:
            # To the back of the queue: a study that just failed should not be retried before
            # every other study has had its first turn.
            values["seq"] = select(func.max(studies.c.seq) + 1).scalar_subquery()
        changed = conn.execute(
            update(studies)
            .where(studies.c.study_id == study_id, studies.c.token == token, studies.c.state == "running")
            .values(**values)
        ).rowcount
        if changed != 1:
            return ""
        who = worker.history_columns() if worker else {
            "host": row.worker_host, "pid": row.worker_pid, "slurm_job_id": row.slurm_job_id,
            "slurm_array_job_id": row.slurm_array_job_id, "slurm_array_task_id": row.slurm_array_task_id,
            "slurm_restart_count": row.slurm_restart_count}
        conn.execute(insert(history).values(
            study_id=study_id, token=token, event=event_name, from_state="running", to_state=new_state, at=now,
            error_class=error_class, message=message,
            duration=now - row.claimed_at if row.claimed_at else None, **who))
        return new_state

    # -- operator actions ------------------------------------------------------------------------

    def retry_failed(self, error_class: str | None = None, study_ids: Iterable[str] | None = None) -> list[str]:
        """Move failed studies back to pending with fresh attempts; returns the ids moved."""
        now = time.time()
        wanted = list(study_ids or [])
        with self.engine.begin() as conn:
            query = select(studies.c.study_id, studies.c.error_class).where(studies.c.state == "failed")
            if error_class:
                query = query.where(studies.c.error_class == error_class)
            if wanted:
                query = query.where(studies.c.study_id.in_(wanted))
            chosen = [r.study_id for r in conn.execute(query.order_by(studies.c.seq))]
            if not chosen:
                return []
            # Only the rows this statement really moved get a history row (a racing retry moves none).
            moved = {r.study_id: r.error_class for r in conn.execute(
                update(studies).where(studies.c.study_id.in_(chosen), studies.c.state == "failed")
                .values(state="pending", attempts=0, updated_at=now, finished_at=None)
                .returning(studies.c.study_id, studies.c.error_class))}
            ids = [sid for sid in chosen if sid in moved]
            if ids:
                conn.execute(insert(history), [
                    {"study_id": sid, "event": "retry", "from_state": "failed", "to_state": "pending",
                     "at": now, "error_class": moved[sid], "message": "retry-failed"} for sid in ids])
        return ids

    def record_submission(self, job_id: str, array_spec: str, script: str, pending: int, tasks: int,
                          kind: str = "array") -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(submissions).values(job_id=str(job_id), kind=kind, array_spec=array_spec,
                                                    tasks=tasks, pending=pending, script=script,
                                                    submitted_at=time.time()))

    # -- reading ---------------------------------------------------------------------------------

    def submissions(self) -> list[dict[str, Any]]:
        with self.reader.begin() as conn:
            return [dict(r._mapping) for r in conn.execute(select(submissions).order_by(submissions.c.id))]

    def running(self) -> list[RunningAttempt]:
        with self.reader.begin() as conn:
            rows = conn.execute(select(studies).where(studies.c.state == "running").order_by(studies.c.seq)).all()
        return [RunningAttempt(
            r.study_id, r.token, r.attempts,
            WorkerInfo(r.worker_host or "", r.worker_pid or 0, r.slurm_job_id, r.slurm_array_job_id,
                       r.slurm_array_task_id, r.slurm_restart_count),
            r.claimed_at, r.heartbeat_at, r.lease_expires_at) for r in rows]

    def study(self, study_id: str) -> dict[str, Any] | None:
        with self.reader.begin() as conn:
            row = conn.execute(select(studies).where(studies.c.study_id == study_id)).first()
        return _decode(dict(row._mapping)) if row else None

    def studies(self, state: str | None = None) -> Iterator[dict[str, Any]]:
        query = select(studies).order_by(studies.c.seq)
        if state:
            query = query.where(studies.c.state == state)
        with self.reader.begin() as conn:
            rows = conn.execute(query).all()
        for row in rows:
            yield _decode(dict(row._mapping))

    def history(self, study_id: str | None = None) -> list[dict[str, Any]]:
        query = select(history).order_by(history.c.id)
        if study_id:
            query = query.where(history.c.study_id == study_id)
        with self.reader.begin() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def states_of_claimed_since(self, since: float) -> dict[str, str]:
        """study -> its state now, for every study claimed at or after `since` (what one run handled)."""
        claimed = select(history.c.study_id).where(history.c.event == "claimed", history.c.at >= since).distinct()
        with self.reader.begin() as conn:
            return dict(conn.execute(select(studies.c.study_id, studies.c.state)
                                     .where(studies.c.study_id.in_(claimed))).all())

    def claims_by(self, host: str, pid: int, since: float) -> int:
        """How many claims the worker process (host, pid) has made since `since` (pids are reused)."""
        with self.reader.begin() as conn:
            return conn.execute(select(func.count()).select_from(history).where(
                history.c.event == "claimed", history.c.host == host, history.c.pid == pid,
                history.c.at >= since)).scalar_one()

    def study_seconds(self, limit: int = 50) -> list[float]:
        """Claim-to-done durations of the most recent done attempts."""
        with self.reader.begin() as conn:
            return list(conn.execute(
                select(history.c.duration).where(history.c.event == "done", history.c.duration.is_not(None))
                .order_by(history.c.id.desc()).limit(limit)).scalars())

    def summary(self, window_seconds: float = 3600.0) -> dict[str, Any]:
        """The `status --json` object: counts, failure groups, attempts, throughput and ETA."""
        now = time.time()
        with self.reader.begin() as conn:
            counts = dict(conn.execute(select(studies.c.state, func.count()).group_by(studies.c.state)).all())
            failed = conn.execute(
                select(studies.c.study_id, studies.c.state, studies.c.error_class, studies.c.error_message,
                       studies.c.log_path)
                .where(studies.c.state.in_(("failed", "skipped"))).order_by(studies.c.seq)).all()
            attempts = conn.execute(
                select(func.count()).select_from(history).where(history.c.event == "claimed")).scalar_one()
            done_times = list(conn.execute(
                select(history.c.at).where(history.c.event == "done", history.c.at >= now - window_seconds)
                .order_by(history.c.at)).scalars())
            retried = conn.execute(
                select(func.count(func.distinct(history.c.study_id)))
                .where(history.c.event.in_(("failed", "lost")), history.c.to_state == "pending")).scalar_one()
            # Held by a worker that stopped heartbeating: reclaimed at the next claim, `run` or `sync`.
            expired = conn.execute(select(func.count()).select_from(studies).where(
                studies.c.state == "running", studies.c.lease_expires_at < now)).scalar_one()
        states = {s: int(counts.get(s, 0)) for s in STATES}
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for r in failed:
            key = (r.state, r.error_class or "unknown")
            group = groups.setdefault(key, {"error_class": key[1], "count": 0, "studies": [],
                                            "example": r.error_message or "", "log": r.log_path})
            group["count"] += 1
            group["studies"].append(r.study_id)

        def grouped(state: str) -> list[dict[str, Any]]:
            found = [g for (s, _), g in groups.items() if s == state]
            return sorted(found, key=lambda g: (-g["count"], g["error_class"]))

        summary: dict[str, Any] = {
            "total": sum(states.values()),
            "states": states,
            "failures": grouped("failed"),
            "skipped": grouped("skipped"),
            "attempts": int(attempts),
            "retried_studies": int(retried),
            "leases_expired": int(expired),
        }
        remaining = states["pending"] + states["running"]
        if len(done_times) >= 2 and done_times[-1] > done_times[0]:
            rate = (len(done_times) - 1) / (done_times[-1] - done_times[0]) * 3600.0
            summary["throughput_per_hour"] = round(rate, 2)
            summary["eta_seconds"] = round(remaining / rate * 3600.0, 1) if remaining else 0.0
        durations = self.study_seconds()
        if durations:
            summary["median_study_seconds"] = round(statistics.median(durations), 3)
        return summary


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("timings", "outputs"):
        if row.get(key):
            row[key] = json.loads(row[key])
    return row


def schema_sql(dialect_name: str = "sqlite") -> str:
    """The ledger schema as SQL DDL for one dialect (db/schema.sql holds the SQLite and PostgreSQL forms)."""
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect()}[dialect_name]
    parts = []
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
    return "\n\n".join(parts) + "\n"


def schema_file() -> str:
    return ("-- The batchseg ledger schema (SQLAlchemy Core tables in batchseg/ledger.py).\n"
            "-- Generated by `python -m batchseg.ledger > db/schema.sql`; a test keeps it current.\n\n"
            "-- SQLite\n" + schema_sql("sqlite") + "\n-- PostgreSQL\n" + schema_sql("postgresql"))


if __name__ == "__main__":
    print(schema_file(), end="")
