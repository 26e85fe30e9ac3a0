"""The ledger: SQLAlchemy Core tables and the study state machine.

States (docs/architecture.md, "Study states"): pending -> running -> done |
failed; running -> pending on a retryable error, an expired lease, a lost Slurm
task or a graceful release; failed -> pending only by retry_failed; skipped for
studies that cannot be processed by design. Every transition appends a row to `history`; nothing is
ever deleted.

A claim is one UPDATE ... WHERE study_id = (SELECT ... LIMIT 1) RETURNING
statement that hands out a fresh token; every later write of that attempt is
fenced by the token, so a worker whose lease was taken over changes nothing.

Flat in its size: the attempt life cycle (claim, heartbeat, done, fail, release,
lease expiry) touches index entries only and runs on the driver's connection
(ledger_hot.py); the counts that `status` and `run` show are kept by triggers
(ledger_counts.py), so no call reads the whole table or history.
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import time
import uuid
import warnings
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from sqlalchemy import (
    BigInteger,
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
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url

from . import ledger_counts, ledger_report, ledger_sqlite, ledger_summary
from .errors import is_retryable, one_line
from .forked import second_cpu
from .ledger_bulk import ADDED_STUDY, SqliteBulk, StagedWriter, insert_rows
from .ledger_hot import HotConnection, Transaction
from .ledger_sql import Prepared

FINDINGS_VERSION = "1"   # meta key `findings`: the studies table has its findings column
SCHEMA_VERSION = 1     # the counters and later indexes are additive: older batchseg versions use the ledger as it is
ADD_CHUNK = 20_000     # studies per bulk insert in add_studies
READ_ONLY = "batchseg_read_only"   # execution option: begin a plain (deferred) transaction on SQLite

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
    Column("findings", Text),                              # JSON: outputs.findings_digest of a done study
    # Seconds of every attempt from claim to outcome, summed (NULL until one ends): kept by a trigger on the
    # history (ledger_counts.py), so the report needs no pass over the history.
    Column("attempt_seconds", Float),
    Column("added_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float),
)
Index("ix_studies_state_seq", studies.c.state, studies.c.seq)
# max(seq) for a retried study's place at the back of the queue: one index step, not a scan.
Index("ix_studies_seq", studies.c.seq)
# Failed and skipped studies by error class, for the failure groups (a partial index: claims never touch it).
# Literal SQL, not parameters: SQLite uses a partial index only for a query that repeats its condition verbatim.
IS_PROBLEM = studies.c.state.in_([literal_column("'failed'"), literal_column("'skipped'")])
# study_id too: listing a group's studies reads the index alone.
Index("ix_studies_problems", studies.c.state, studies.c.error_class, studies.c.seq, studies.c.study_id,
      sqlite_where=IS_PROBLEM, postgresql_where=IS_PROBLEM)

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
# status (claims, the last hour's throughput, recent durations) and `run`'s "claimed since" read by event and time.
Index("ix_history_event_at", history.c.event, history.c.at)

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

# Summary counters, kept by triggers (ledger_counts.py): name -> count.
counts = Table(
    "counts",
    metadata,
    Column("name", String(96), primary_key=True),
    Column("n", BigInteger, nullable=False),
)
# PostgreSQL's triggers add here instead of to `counts` (no hot rows); claims fold these into `counts`.
count_deltas = Table(
    "count_deltas",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("name", String(96), nullable=False),
    Column("delta", BigInteger, nullable=False),
)
# Indexes added after the first release: a ledger made before them gets them when it is next opened.
LATER_INDEXES = tuple(i for t in (studies, history) for i in t.indexes
                      if i.name in ("ix_studies_seq", "ix_studies_problems", "ix_history_event_at"))


# The hot path's statements are built once and compiled once per dialect (ledger_hot.py): building and
# compiling them per call cost more than executing them. Parameters are p_* so they never shadow columns.
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
    outputs=bindparam("p_outputs"), timings=bindparam("p_timings"), findings=bindparam("p_findings"))
RECORD_FINDINGS = update(studies).where(studies.c.study_id == bindparam("p_study"), studies.c.state == "done").values(
    findings=bindparam("p_findings"))
RELEASE = update(studies).where(*_HELD).values(
    state="pending", token=None, lease_expires_at=None, attempts=studies.c.attempts - 1, updated_at=bindparam("p_now"))
_ATTEMPT = (studies.c.attempts, studies.c.claimed_at, studies.c.worker_host, studies.c.worker_pid,
            studies.c.slurm_job_id, studies.c.slurm_array_job_id, studies.c.slurm_array_task_id,
            studies.c.slurm_restart_count)
# The running studies are a short range of ix_studies_state_seq, whatever the ledger's size. The attempt's
# columns come along: ending it needs them, and the fenced UPDATE decides whether it is still this attempt.
EXPIRED = select(studies.c.study_id, studies.c.token, *_ATTEMPT).where(
    studies.c.state == "running", studies.c.lease_expires_at < bindparam("p_now"))
HELD_ATTEMPT = (
    select(*_ATTEMPT)
    .where(*_HELD)
    .with_for_update()  # PostgreSQL: a racing fail/lost on the same attempt waits, then finds nothing
)
_ENDED = dict(token=None, lease_expires_at=None, error_class=bindparam("p_class"), error_message=bindparam("p_message"),
              log_path=bindparam("p_log"), updated_at=bindparam("p_now"))
# To the back of the queue: a study that just failed should not be retried before every other study has had
# its first turn. max(seq) is one step down ix_studies_seq.
END_RETRY = update(studies).where(*_HELD).values(
    state="pending", finished_at=None, seq=select(func.max(studies.c.seq)).scalar_subquery() + 1, **_ENDED)
END_FAILED = update(studies).where(*_HELD).values(state="failed", finished_at=bindparam("p_now"), **_ENDED)
HISTORY_COLUMNS = tuple(c.name for c in history.columns if c.name != "id")
# Every history row through one statement with every column, so it compiles once.
ADD_HISTORY = insert(history).values({name: bindparam(f"h_{name}") for name in HISTORY_COLUMNS})
_NO_HISTORY = {f"h_{name}": None for name in HISTORY_COLUMNS}
DONE_WINDOW = select(func.count(), func.min(history.c.at), func.max(history.c.at)).where(
    history.c.event == "done", history.c.at >= bindparam("p_since"))
RECENT_DURATIONS = (
    select(history.c.duration).where(history.c.event == "done", history.c.duration.is_not(None))
    .order_by(history.c.at.desc()).limit(bindparam("p_limit")))
# The report's stream (ledger_report.py): every study of a run of the queue (p_first <= seq <= p_last) in queue order
# with the seconds all its attempts took (the kept column, no pass over the history), and the error classes of the
# attempts that failed or were lost (few).
REPORT_STUDIES = (
    select(studies.c.study_id, studies.c.series_id, studies.c.state, studies.c.attempts, studies.c.error_class,
           studies.c.error_message, studies.c.log_path, studies.c.timings, studies.c.worker_host,
           studies.c.worker_pid, studies.c.slurm_array_job_id, studies.c.slurm_array_task_id, studies.c.findings,
           studies.c.attempt_seconds)
    .where(studies.c.seq >= bindparam("p_first"), studies.c.seq <= bindparam("p_last"))
    .order_by(studies.c.seq))
DONE_COUNT = select(func.count()).select_from(studies).where(studies.c.state == "done")
# The queue place of the done study after p_offset others: one walk along ix_studies_state_seq.
DONE_SEQ_AT = (select(studies.c.seq).where(studies.c.state == "done").order_by(studies.c.seq).limit(1)
               .offset(bindparam("p_offset")))
ATTEMPT_ERRORS = (select(history.c.study_id, history.c.error_class)
                  .where(history.c.event.in_([literal_column("'failed'"), literal_column("'lost'")]))
                  .order_by(history.c.id))
_PROBLEM_ROWS = select(studies.c.study_id, studies.c.state, studies.c.error_class, studies.c.error_message,
                       studies.c.log_path).where(IS_PROBLEM)
# Every failed and skipped study, group by group in queue order: the index's own order, from the index alone.
PROBLEMS = (select(studies.c.state, studies.c.error_class, studies.c.study_id).where(IS_PROBLEM)
            .order_by(studies.c.state, studies.c.error_class, studies.c.seq))
PROBLEM_GROUP = (_PROBLEM_ROWS.where(studies.c.state == bindparam("p_state"),
                                     studies.c.error_class == bindparam("p_class"))
                 .order_by(studies.c.seq).limit(bindparam("p_limit")))
PROBLEM_GROUP_UNKNOWN = (_PROBLEM_ROWS.where(studies.c.state == bindparam("p_state"),
                                             or_(studies.c.error_class.is_(None), studies.c.error_class == "unknown"))
                         .order_by(studies.c.seq).limit(bindparam("p_limit")))
LEASES_EXPIRED = select(func.count()).select_from(studies).where(
    studies.c.state == "running", studies.c.lease_expires_at < bindparam("p_now"))
# The reads that run on a plain driver connection (the summary: ledger_summary.py; the report: ledger_report.py),
# compiled ahead of time into ledger_reads.py, so that `status` and `report` need no SQLAlchemy.
PLAIN_READS = {
    "meta": select(meta.c.key, meta.c.value),
    "any_submission": select(submissions.c.id).limit(1),
    "done_window": DONE_WINDOW,
    "recent_durations": RECENT_DURATIONS,
    "leases_expired": LEASES_EXPIRED,
    "problems": PROBLEMS,
    "problem_group": PROBLEM_GROUP,
    "problem_group_unknown": PROBLEM_GROUP_UNKNOWN,
    "report_studies": REPORT_STUDIES,
    "attempt_errors": ATTEMPT_ERRORS,
    "done_count": DONE_COUNT,
    "done_seq_at": DONE_SEQ_AT,
}


# The meta values of a ledger that needs nothing done to it: `_create` then writes nothing, and the plain
# readers (ledger_summary.PlainReader) may read it (ledger_reads.py holds the same).
CURRENT_META = {"schema_version": str(SCHEMA_VERSION), "counts": ledger_counts.COUNTS_VERSION,
                "findings": FINDINGS_VERSION, "attempt_seconds": ledger_counts.ATTEMPT_SECONDS_VERSION}


def history_row(study_id: str, event_name: str, from_state: str | None, to_state: str, at: float, *,
                token: str | None = None, who: dict[str, Any] | None = None, error_class: str | None = None,
                message: str | None = None, duration: float | None = None) -> dict[str, Any]:
    """The parameters of ADD_HISTORY for one event."""
    row = dict(_NO_HISTORY)
    row.update(h_study_id=study_id, h_token=token, h_event=event_name, h_from_state=from_state, h_to_state=to_state,
               h_at=at, h_error_class=error_class, h_message=message, h_duration=duration)
    if who:
        for key, value in who.items():
            row[f"h_{key}"] = value
    return row


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
        # Spelled out: dataclasses.asdict deep-copies, and this runs for every claim.
        return {"host": self.host, "pid": self.pid, "slurm_job_id": self.slurm_job_id,
                "slurm_array_job_id": self.slurm_array_job_id, "slurm_array_task_id": self.slurm_array_task_id,
                "slurm_restart_count": self.slurm_restart_count, "cuda_visible_devices": self.cuda_visible_devices}


@dataclass(slots=True)
class StudyRow:
    """One study as `init` found it in the dataset (slots: init holds a million of them)."""

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


def _sqlite_engine(url: str, staging: dict[str, str]) -> tuple[Engine, bool]:
    ledger_sqlite.check_version()
    database = make_url(url).database or ""
    on_network = ledger_sqlite.on_network(database)
    if on_network:
        warnings.warn(ledger_sqlite.network_warning(database), stacklevel=3)
    engine = create_engine(url, connect_args=ledger_sqlite.connect_args(on_network))

    @event.listens_for(engine, "do_connect")
    def _to_staged(_dialect: Any, _record: Any, cargs: list[Any], _cparams: dict[str, Any]) -> None:
        # A staged ledger (Ledger's stage_new): the engine keeps the URL, the connection opens the temporary file.
        if staging:
            cargs[0] = staging["file"]

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy's begin event below issues BEGIN IMMEDIATE (or BEGIN for a read) itself.
        ledger_sqlite.configure(dbapi_connection, on_network, staged=bool(staging))

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Reads need no write lock: status, report and heartbeat-free reads must not queue behind claims.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine, on_network


def _engine(url: str, staging: dict[str, str]) -> tuple[str, Engine, bool]:
    """(dialect, engine, on a network filesystem) for a URL; a URL that cannot work is one RuntimeError line.
    `staging`: where a SQLite engine's connections go while it is filled under a temporary name (Ledger)."""
    from sqlalchemy.exc import ArgumentError

    kind = ""
    try:
        parsed = make_url(url)
        kind = parsed.drivername
        if parsed.get_backend_name() == "sqlite":
            return "sqlite", *_sqlite_engine(url, staging)
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


class _NewRows:
    """add_studies' rows that are not in `known` (which gets them), as ADDED_STUDY tuples, ADD_CHUNK at a time;
    `result` gets their ids (and the ids already known), counts() the counters they add."""

    def __init__(self, known: set[str], seq: int, result: AddResult) -> None:
        self.known = known
        self.seq = seq
        self.result = result
        self.pending = 0
        self.skipped: dict[str | None, int] = {}

    def chunks(self, rows: Iterable[StudyRow]) -> Iterator[list[tuple[Any, ...]]]:
        known, skipped = self.known, self.skipped
        existing, added = self.result.existing.append, self.result.added.append
        seq, pending = self.seq, self.pending   # locals in the loop (a million rows), kept when it ends
        now = time.time()
        chunk: list[tuple[Any, ...]] = []
        try:
            for row in rows:
                study = row.study_id
                size = len(known)
                known.add(study)   # one hash step where `in` and add took two: a million ids
                if len(known) == size:
                    existing(study)
                    continue
                seq += 1
                if row.skip_class:
                    state = "skipped"
                    skipped[row.skip_class] = skipped.get(row.skip_class, 0) + 1
                else:
                    state = "pending"
                    pending += 1
                chunk.append((study, seq, row.series_id, row.series_description, row.selection_reason,
                              row.input_path, state, 0, row.skip_class, row.skip_message, now, now))
                added(study)
                if len(chunk) >= ADD_CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        finally:
            self.seq, self.pending = seq, pending

    def counts(self) -> dict[str, int]:
        added = {("skipped", error): n for error, n in self.skipped.items()}
        if self.pending:
            added["pending", None] = self.pending
        return ledger_counts.added_counts(added)


class Ledger:
    """The study ledger behind one SQLAlchemy URL (SQLite by default, PostgreSQL by option)."""

    def __init__(self, url: str, *, max_attempts: int = 3, stage_new: bool = False) -> None:
        """`stage_new`: when `url` names a SQLite file with nothing there yet, the new ledger is made and filled
        under a temporary name beside it, and appears at its name, whole, when filling() ends."""
        self.url = url
        self.max_attempts = max_attempts
        # {"file": the temporary file, "final": the ledger's own} while a new ledger is staged.
        self._staging: dict[str, str] = {}
        final = ledger_sqlite.plain_path(url) if stage_new else None
        staged = ledger_sqlite.stage(final) if final else None
        if staged:
            self._staging.update(file=staged, final=final)
        self.dialect, self.engine, self.on_network_fs = _engine(url, self._staging)
        if self.dialect not in ("sqlite", "postgresql"):
            raise RuntimeError(f"the ledger runs on SQLite or PostgreSQL, not {self.dialect} ({url.split(':')[0]})")
        if self.dialect == "sqlite":
            self.reader = self.engine.execution_options(**{READ_ONLY: True})
            self._hot = HotConnection(self.engine, begin="BEGIN IMMEDIATE")
        else:
            # The cold paths keep pre-ping (a restarted server costs them nothing); the hot path has its own
            # connection, which a failed statement replaces. One snapshot for every query of a read (the counts
            # and the rows behind them agree).
            self.reader = self.engine.execution_options(isolation_level="REPEATABLE READ")
            self._hot = HotConnection(self.engine, begin=None)
        self._folds = ledger_counts.folds(self.dialect)
        self._create()

    @classmethod
    def for_config(cls, config: Any, *, stage_new: bool = False) -> "Ledger":
        return cls(config.db_url, max_attempts=config.max_attempts, stage_new=stage_new)

    def close(self) -> None:
        self._hot.close()
        self.engine.dispose()

    @contextmanager
    def filling(self) -> Iterator[None]:
        """The block that fills a staged ledger (stage_new): when it ends, the ledger moves into place, whole
        (ledger_sqlite.publish); when it raises, its temporary file is removed and nothing appears at the
        ledger's name (a process killed midway leaves the temporary file, never a half ledger). A ledger that is
        not staged is used as it is."""
        if not self._staging:
            yield
            return
        try:
            yield
            self.close()   # every connection to the temporary file closed before it moves
            ledger_sqlite.publish(self._staging["file"], self._staging["final"], self.on_network_fs)
        except BaseException:
            self.close()
            ledger_sqlite.discard(self._staging["file"])
            raise
        finally:
            self._staging.clear()   # from now on the engine opens the ledger's own file

    def _create(self) -> None:
        found = self._meta(self.reader)
        if found is not None:
            version = found.get("schema_version")
            if version is not None and int(version) > SCHEMA_VERSION:
                raise RuntimeError(f"the ledger has schema {version}; this batchseg knows up to {SCHEMA_VERSION}: "
                                   "upgrade batchseg")
            if all(found.get(key) == value for key, value in CURRENT_META.items()):
                return
        # A new ledger, or one made before the counters and indexes: only now take the write lock.
        with self.engine.begin() as conn:
            if found is not None and self.dialect == "postgresql":
                # No writer may change a row between counting and the triggers taking over.
                conn.exec_driver_sql("LOCK TABLE studies, history IN SHARE ROW EXCLUSIVE MODE")
            metadata.create_all(conn)
            for index in LATER_INDEXES:
                index.create(conn, checkfirst=True)
            keys = dict(conn.execute(select(meta.c.key, meta.c.value)).all())   # again, under the lock
            if keys.get("findings") != FINDINGS_VERSION:
                # A ledger made before the findings digest: the column is added, empty (the report reads
                # those studies' files). Older batchseg versions name their columns and never see it.
                if "findings" not in {c["name"] for c in inspect(conn).get_columns("studies")}:
                    conn.exec_driver_sql("ALTER TABLE studies ADD COLUMN findings TEXT")
                _set_meta(conn, keys, "findings", FINDINGS_VERSION)
            if keys.get("attempt_seconds") != ledger_counts.ATTEMPT_SECONDS_VERSION:
                # A ledger made before the kept attempt seconds: the column, its trigger, and its values summed
                # from the history once. Older batchseg versions never read it; their outcomes fire the trigger.
                if "attempt_seconds" not in {c["name"] for c in inspect(conn).get_columns("studies")}:
                    conn.exec_driver_sql("ALTER TABLE studies ADD COLUMN attempt_seconds FLOAT")
                for statement in ledger_counts.attempt_seconds_ddl(self.dialect):
                    conn.exec_driver_sql(statement)
                conn.exec_driver_sql(ledger_counts.FILL_ATTEMPT_SECONDS)
                _set_meta(conn, keys, "attempt_seconds", ledger_counts.ATTEMPT_SECONDS_VERSION)
            if "schema_version" not in keys:
                conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            if keys.get("counts") != ledger_counts.COUNTS_VERSION:
                for statement in (*ledger_counts.trigger_ddl(self.dialect), *ledger_counts.FILL):
                    conn.exec_driver_sql(statement)
                _set_meta(conn, keys, "counts", ledger_counts.COUNTS_VERSION)

    @staticmethod
    def _meta(engine: Engine) -> dict[str, str] | None:
        """The meta table's keys, or None for a database without a ledger yet."""
        with engine.begin() as conn:
            if not inspect(conn).has_table("meta"):
                return None
            return dict(conn.execute(select(meta.c.key, meta.c.value)).all())

    # -- filling ---------------------------------------------------------------------------------

    def add_studies(self, rows: Iterable[StudyRow]) -> AddResult:
        """Add new studies; existing ones keep their state and history.

        One transaction, on the driver's cursor in chunks (a million studies is `init`'s ordinary
        day): SQLAlchemy's per-row parameter handling cost more than the inserts. On SQLite, more than one
        chunk goes in bulk (ledger_bulk.SqliteBulk): a crash or an error anywhere rolls the whole of it back. A new
        ledger being staged (stage_new) gets its chunks from a writer process while this one makes the next
        (ledger_bulk.StagedWriter).
        """
        result = AddResult()
        rows = iter(rows)
        first = next(rows, None)
        if first is None:   # nothing to add: no need to read a million ids
            return result
        rows = itertools.chain((first,), rows)
        if self._staging and second_cpu() and self._empty():
            return self._add_staged(rows, result)
        with self.engine.begin() as conn:
            cursor = conn.connection.cursor()
            bulk: SqliteBulk | None = None
            try:
                cursor.execute("SELECT study_id FROM studies")
                known = {sid for (sid,) in cursor}
                cursor.execute("SELECT max(seq) FROM studies")
                new = _NewRows(known, cursor.fetchone()[0] or 0, result)
                for chunk in new.chunks(rows):
                    if bulk is None and self.dialect == "sqlite" and len(chunk) == ADD_CHUNK:
                        bulk = SqliteBulk(cursor, empty=len(known) == len(result.added))
                    self._insert(conn, cursor, chunk)
                if bulk is not None:
                    bulk.finish(new.counts())
            finally:
                if bulk is not None:
                    bulk.close()
                cursor.close()
        return result

    def _empty(self) -> bool:
        with self.reader.begin() as conn:
            return conn.exec_driver_sql("SELECT 1 FROM studies LIMIT 1").first() is None

    def _add_staged(self, rows: Iterable[StudyRow], result: AddResult) -> AddResult:
        """add_studies into the new, empty ledger being staged: more than one chunk goes to a StagedWriter, so
        that its SQLite work and this process's making of the rows (the iteration of `rows`) run side by side."""
        new = _NewRows(set(), 0, result)
        writer: StagedWriter | None = None
        try:
            for chunk in new.chunks(rows):
                if writer is None and len(chunk) < ADD_CHUNK:   # the only chunk: in this process, as any small add
                    with self.engine.begin() as conn, closing(conn.connection.cursor()) as cursor:
                        self._insert(conn, cursor, chunk)
                    return result
                if writer is None:
                    # No connection of this process open to the file: the writer's SQLite, forked from this one's,
                    # must not believe it shares the file with one (SQLite's own rule: no connection across a fork).
                    self.close()
                    writer = StagedWriter(self._staging["file"], self.on_network_fs)
                writer.send(chunk)
            if writer is not None:
                writer.finish(new.counts())
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        return result

    _ADDED_EVENT = ("study_id", "event", "to_state", "at", "error_class", "message")

    def _insert(self, conn: Connection, cursor: Any, new_rows: list[tuple[Any, ...]]) -> None:
        """New study rows (ADDED_STUDY's columns) and an `added` history row for each."""
        if self.dialect == "sqlite":
            insert_rows(cursor, new_rows)
            return
        # to_state, at, error_class, message: the study's state, added_at, error_class, error_message.
        events = [(v[0], "added", v[6], v[10], v[8], v[9]) for v in new_rows]
        for table, columns, values in ((studies, ADDED_STUDY, new_rows), (history, self._ADDED_EVENT, events)):
            names = ", ".join(conn.dialect.identifier_preparer.quote(c) for c in columns)
            if self.dialect == "postgresql" and hasattr(cursor, "copy"):   # psycopg 3: COPY, the bulk path
                with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                    for value in values:
                        copy.write_row(value)
            else:
                conn.execute(insert(table), [dict(zip(columns, value)) for value in values])

    def study_ids(self) -> set[str]:
        """Every study id in the ledger (on the driver's cursor: a million of them through SQLAlchemy's rows
        cost seconds)."""
        with self.reader.begin() as conn:
            cursor = conn.connection.cursor()
            try:
                cursor.execute("SELECT study_id FROM studies")
                return {sid for (sid,) in cursor}
            finally:
                cursor.close()

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
                conn.execute(ADD_HISTORY, history_row(
                    study_id, "reset", "skipped", "pending", now, error_class=error_class,
                    message="init --recheck-skipped: the dataset now has its series"))
                moved.append(study_id)
        return moved

    # -- the attempt life cycle ------------------------------------------------------------------

    def claim(self, worker: WorkerInfo, lease_seconds: float) -> Claim | None:
        """Claim the next pending study, or None when nothing is pending."""
        now = time.time()
        token = uuid.uuid4().hex
        who = worker.history_columns()
        with self._hot.transaction() as tx:
            self._expire_leases(tx, now)
            row = tx.execute(CLAIM, {
                "p_token": token, "p_now": now, "p_expires": now + lease_seconds, "p_host": worker.host,
                "p_pid": worker.pid, "p_job": worker.slurm_job_id, "p_array_job": worker.slurm_array_job_id,
                "p_array_task": worker.slurm_array_task_id, "p_restarts": worker.slurm_restart_count}).fetchone()
            if row is not None:
                tx.execute(ADD_HISTORY, history_row(row[0], "claimed", "pending", "running", now, token=token,
                                                    who=who))
            if self._folds:
                tx.execute_text(ledger_counts.FOLD)
        if row is None:
            return None
        return Claim(row[0], token, row[1], row[2], row[3], now, worker)

    def _expire_leases(self, tx: Transaction, now: float) -> list[str]:
        expired = tx.execute(EXPIRED, {"p_now": now}).fetchall()
        return [sid for sid, token, *attempt in expired
                if self._end_attempt(tx, sid, token, "lost", "worker.lost",
                                     "lease expired: the worker stopped sending heartbeats", now, attempt=attempt)]

    def expire_leases(self) -> list[str]:
        """Send studies whose lease ran out back to the queue (or to failed); returns their ids."""
        with self._hot.transaction() as tx:
            return self._expire_leases(tx, time.time())

    def heartbeat(self, claim: Claim, lease_seconds: float) -> bool:
        now = time.time()
        with self._hot.transaction() as tx:
            return tx.execute(HEARTBEAT, {"p_study": claim.study_id, "p_token": claim.token, "p_now": now,
                                          "p_expires": now + lease_seconds}).rowcount == 1

    def complete(self, claim: Claim, outputs: dict[str, str], timings: dict[str, float],
                 findings: str | None = None) -> bool:
        """The attempt `claim` holds is done; `findings` is outputs.findings_digest of what it published."""
        now = time.time()
        with self._hot.transaction() as tx:
            done = tx.execute(COMPLETE, {
                "p_study": claim.study_id, "p_token": claim.token, "p_now": now, "p_findings": findings,
                "p_outputs": json.dumps(outputs), "p_timings": json.dumps(timings)}).rowcount == 1
            if done:
                tx.execute(ADD_HISTORY, history_row(
                    claim.study_id, "done", "running", "done", now, token=claim.token,
                    who=claim.worker.history_columns(), duration=now - claim.claimed_at))
        return done

    def record_findings(self, findings: dict[str, str | None]) -> None:
        """Done studies' findings digests again (study -> digest), after `batchseg levels` rewrote their metadata."""
        if findings:
            with self.engine.begin() as conn:
                conn.execute(RECORD_FINDINGS, [{"p_study": k, "p_findings": v} for k, v in findings.items()])

    def fail(self, claim: Claim, error_class: str, message: str, log_path: str | None = None) -> str:
        """Record a failed attempt. Returns the new state ('pending' or 'failed'), or '' if the token was stale."""
        with self._hot.transaction() as tx:
            return self._end_attempt(tx, claim.study_id, claim.token, "failed", error_class, message,
                                     time.time(), log_path=log_path, worker=claim.worker)

    def mark_lost(self, study_id: str, token: str, message: str, error_class: str = "worker.lost") -> str:
        """The worker holding this attempt is gone (Slurm says so): charge the attempt and requeue or fail."""
        with self._hot.transaction() as tx:
            return self._end_attempt(tx, study_id, token, "lost", error_class, message, time.time())

    def release(self, claim: Claim, reason: str) -> bool:
        """Give the study back without charging the attempt (signal, time budget)."""
        now = time.time()
        with self._hot.transaction() as tx:
            released = tx.execute(RELEASE, {"p_study": claim.study_id, "p_token": claim.token,
                                            "p_now": now}).rowcount == 1
            if released:
                tx.execute(ADD_HISTORY, history_row(
                    claim.study_id, "released", "running", "pending", now, token=claim.token,
                    who=claim.worker.history_columns(), message=one_line(reason), duration=now - claim.claimed_at))
        return released

    def _end_attempt(self, tx: Transaction, study_id: str, token: str, event_name: str, error_class: str,
                     message: str, now: float, *, log_path: str | None = None,
                     worker: WorkerInfo | None = None, attempt: list[Any] | None = None) -> str:
        """End the attempt `token` holds (fenced: '' when it no longer holds it); `attempt` is its _ATTEMPT
        columns when the caller has read them already."""
        held = {"p_study": study_id, "p_token": token}
        row = attempt if attempt is not None else tx.execute(HELD_ATTEMPT, held).fetchone()
        if row is None:
            return ""
        attempts, claimed_at, host, pid, job, array_job, array_task, restarts = row
        retry = is_retryable(error_class) and attempts < self.max_attempts
        message = one_line(message)
        changed = tx.execute(END_RETRY if retry else END_FAILED, {
            **held, "p_class": error_class, "p_message": message, "p_log": log_path, "p_now": now}).rowcount
        if changed != 1:
            return ""
        new_state = "pending" if retry else "failed"
        who = worker.history_columns() if worker else {
            "host": host, "pid": pid, "slurm_job_id": job, "slurm_array_job_id": array_job,
            "slurm_array_task_id": array_task, "slurm_restart_count": restarts}
        tx.execute(ADD_HISTORY, history_row(
            study_id, event_name, "running", new_state, now, token=token, who=who, error_class=error_class,
            message=message, duration=now - claimed_at if claimed_at else None))
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
                conn.execute(ADD_HISTORY, [history_row(sid, "retry", "failed", "pending", now,
                                                       error_class=moved[sid], message="retry-failed")
                                           for sid in ids])
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

    def recently_done(self, limit: int) -> list[dict[str, Any]]:
        """The study rows of the last `limit` done attempts, newest first (through the history's event index)."""
        with self.reader.begin() as conn:
            ids = list(dict.fromkeys(conn.execute(
                select(history.c.study_id).where(history.c.event == "done")
                .order_by(history.c.at.desc()).limit(limit)).scalars()))
            rows = {r.study_id: _decode(dict(r._mapping))
                    for r in conn.execute(select(studies).where(studies.c.study_id.in_(ids)))}
        return [rows[i] for i in ids if i in rows]

    def report_cuts(self, parts: int) -> list[int]:
        """ledger_report.report_cuts: where to cut the queue into `parts` runs of the report."""
        with self.reader.begin() as conn:
            cursor = conn.connection.cursor()
            try:
                return ledger_report.report_cuts(cursor, self.dialect, parts)
            finally:
                cursor.close()

    def report_rows(self, page_size: int = ledger_report.PAGE, *, first_seq: int | None = None,
                    end_seq: int | None = None) -> Iterator[dict[str, Any]]:
        """ledger_report.report_rows in one read transaction: every study of a run of the queue, streamed."""
        with self.reader.begin() as conn:
            yield from ledger_report.report_rows(conn.connection, self.dialect, page_size=page_size,
                                                 first_seq=first_seq, end_seq=end_seq)

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
        """Claim-to-done durations of the most recent done attempts (newest first)."""
        with self.reader.begin() as conn:
            return list(conn.execute(RECENT_DURATIONS, {"p_limit": limit}).scalars())

    def counts(self) -> dict[str, int]:
        """The summary counters (ledger_counts.py): `state:<state>`, `<failed|skipped>:<class>`, `claims`, `retried`."""
        with self.reader.begin() as conn:
            return self._counts(conn)

    @staticmethod
    def _counts(conn: Connection) -> dict[str, int]:
        return ledger_summary.counts(conn.connection.cursor())

    def states(self) -> dict[str, int]:
        """Studies per state (every state, zeros included), from the counters alone."""
        return ledger_summary.states(self.counts())

    def summary(self, window_seconds: float = 3600.0, *, studies_per_group: int | None = None) -> dict[str, Any]:
        """The `status --json` object (ledger_summary.summary, the same code `status` runs without SQLAlchemy)."""
        with self.reader.begin() as conn:
            cursor = conn.connection.cursor()
            try:
                return ledger_summary.summary(cursor, self.dialect, window_seconds=window_seconds,
                                              studies_per_group=studies_per_group)
            finally:
                cursor.close()


def _set_meta(conn: Connection, keys: dict[str, str], key: str, value: str) -> None:
    """meta[key] = value, where `keys` is the meta table as read in this transaction."""
    if key in keys:
        conn.execute(update(meta).where(meta.c.key == key).values(value=value))
    else:
        conn.execute(insert(meta).values(key=key, value=value))


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("timings", "outputs", "findings"):
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
    parts += [statement + ";" for statement in (*ledger_counts.trigger_ddl(dialect_name),
                                                 *ledger_counts.attempt_seconds_ddl(dialect_name))]
    return "\n\n".join(parts) + "\n"


def schema_file() -> str:
    return ("-- The batchseg ledger schema (SQLAlchemy Core tables in batchseg/ledger.py).\n"
            "-- Generated by `python -m batchseg.ledger > db/schema.sql`; a test keeps it current.\n\n"
            "-- SQLite\n" + schema_sql("sqlite") + "\n-- PostgreSQL\n" + schema_sql("postgresql"))


def reads_file() -> str:
    """ledger_reads.py: PLAIN_READS compiled for SQLite (sqlite3) and PostgreSQL (psycopg), and CURRENT_META."""
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

    lines = ['"""The plain readers\' SQL: ledger.py\'s PLAIN_READS compiled for sqlite3 and psycopg, and CURRENT_META.',
             "",
             "Generated by `python -m batchseg.ledger reads > batchseg/ledger_reads.py`; a test keeps it current.",
             "Do not edit: change the Core statements in ledger.py and generate it again.",
             '"""',
             "from .ledger_sql import Prepared",
             "",
             f"CURRENT_META = {CURRENT_META!r}",
             "",
             "READS = {"]
    for name, dialect in (("sqlite", SQLiteDialect_pysqlite()), ("postgresql", PGDialect_psycopg())):
        lines.append(f"    {name!r}: {{")
        for key, statement in PLAIN_READS.items():
            lines.append(f"        {key!r}: {Prepared.compile(statement, dialect)!r},")
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(reads_file() if sys.argv[1:] == ["reads"] else schema_file(), end="")
