"""A SQLite ledger file as the driver opens it: the SQLite it needs, the network-filesystem check, the busy
timeout and the journal settings; and a new ledger file made under a temporary name, then moved into place.

Two openers share these: the SQLAlchemy engine (ledger.py) and the plain sqlite3 reader behind `batchseg
status` (ledger_summary.py), so both open the file the same way. No SQLAlchemy here: importing it costs
more than the whole of `status` on a million-study ledger.
"""
from __future__ import annotations

import os
import re
import socket
import sqlite3
import uuid
from pathlib import Path
from typing import Any

MIN_VERSION = (3, 35)   # claims need UPDATE ... RETURNING
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "fuse.ceph",
                       "fuse.beegfs", "panfs", "fuse.sshfs"}
PLAIN_URL_PREFIXES = ("sqlite:///", "sqlite+pysqlite:///")


def check_version() -> None:
    if sqlite3.sqlite_version_info < MIN_VERSION:
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old for the ledger (claims need 3.35's "
                           "UPDATE ... RETURNING): use a Python built with a newer SQLite, or a PostgreSQL --db URL")


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


def on_network(database: str) -> bool:
    """Whether the ledger file `database` lies on a network filesystem (no WAL there: no shared memory)."""
    return bool(database) and database != ":memory:" and filesystem_type(Path(database).parent) in NETWORK_FILESYSTEMS


def network_warning(database: str) -> str:
    return (f"the ledger {database} is on a network filesystem: using a rollback journal and long lock waits; "
            "for large arrays point --db at a PostgreSQL URL")


def connect_args(network: bool) -> dict[str, Any]:
    # A long busy timeout: many array tasks claim at once, and waiting beats failing.
    # check_same_thread off: the hot path's connection is shared, under its lock, with the heartbeat thread.
    return {"timeout": 300 if network else 60, "check_same_thread": False}


def configure(dbapi_connection: sqlite3.Connection, network: bool, *, staged: bool = False) -> None:
    """A new connection's settings: transactions begun by the caller, the journal for its filesystem (`staged`:
    a new ledger's file under its temporary name, which only its filler opens: see stage())."""
    # The caller issues BEGIN or BEGIN IMMEDIATE itself: a claim takes the write lock up front, so its read
    # and write cannot interleave with another's; a read takes none.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    if staged:
        # No WAL and no fsync while it fills: a million studies' pages written to the WAL and then copied into the
        # file cost more than the inserts (the commit alone ~2.3 s of 1M studies' init). The rollback journal in
        # memory is nearly empty (the pages are new) and keeps ROLLBACK working; publish() syncs the whole file.
        cursor.execute("PRAGMA journal_mode=MEMORY")
        cursor.execute("PRAGMA synchronous=OFF")
    elif network:
        # WAL needs shared memory, which network filesystems do not provide.
        cursor.execute("PRAGMA journal_mode=DELETE")
        cursor.execute("PRAGMA synchronous=FULL")
    else:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def plain_path(url: str) -> str | None:
    """The file of a plain `sqlite:///PATH` URL (what SQLAlchemy would open), or None for any URL that is not
    one (another database, `:memory:`, query options, %-escapes: those only SQLAlchemy reads right)."""
    for prefix in PLAIN_URL_PREFIXES:
        if url.startswith(prefix):
            path = url[len(prefix):]
            if path and path != ":memory:" and not any(c in path for c in "?#%"):
                return path
    return None


def stage(final: str) -> str | None:
    """A temporary name beside the ledger file `final` under which a new ledger is made and filled, or None when
    there is something at `final` already (a ledger, or the -wal or -journal of one: never staged over). Either
    way, the temporary ledgers of killed inits on this host go first (_discard_orphans)."""
    path = Path(final)
    mine = f".{path.name}.{_host()}."
    _discard_orphans(path.parent, mine)
    if any(os.path.lexists(final + suffix) for suffix in ("", "-wal", "-journal")):
        return None
    # Hidden, unique and ending .tmp, as files.open_atomic names its temporary files; the host and process that
    # fill it are in the name, so that a later init on this host can tell a killed filler's file (_discard_orphans).
    return str(path.parent / f"{mine}{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _host() -> str:
    """This machine's name as a file name's part (what is not a letter, digit or "-" becomes "_")."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _discard_orphans(folder: Path, prefix: str) -> None:
    """Remove the temporary ledgers of an init on this host whose process is gone (killed before it could remove
    its own: at a million studies, a third of a gigabyte each). Another host's, or a live process's, are left alone."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid, _, rest = name[len(prefix):].partition(".")
        if pid.isdecimal() and rest.count(".") == 1 and not _alive(int(pid)):
            discard(str(folder / name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # another user's process: it is there
        return True
    return True


def publish(staged: str, final: str, network: bool) -> None:
    """The filled ledger `staged` (stage()) moves to `final`: it gets the journal of its filesystem (configure),
    is fsynced, and appears at `final` whole or not at all. Never over a file that appeared at `final` meanwhile
    (a hard link, where the filesystem has them: it fails when the name is taken), unless that is an empty ledger
    no one has open (_unused_and_empty); RuntimeError otherwise, and the caller removes `staged`."""
    connection = sqlite3.connect(staged)
    try:
        configure(connection, network)   # WAL locally: the switch writes the file's header
    finally:
        connection.close()
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    taken = RuntimeError(f"{final} appeared while init filled a new ledger; it is left as it was: run init again "
                         "to add the studies to it")
    try:
        os.link(staged, final)
    except OSError as exc:   # the name is taken, or no hard links on this filesystem: a rename, after a look
        if (isinstance(exc, FileExistsError) or os.path.lexists(final)) and not _unused_and_empty(final):
            raise taken from None
        os.replace(staged, final)
    else:
        os.unlink(staged)


def _unused_and_empty(path: str) -> bool:
    """Whether `path` is a ledger with no study, no history and no submission that no one has open in WAL mode (no
    -wal, -shm or -journal beside it): what `batchseg status` makes of a ledger it finds missing while a new one
    fills under its temporary name. Read as an immutable file: the look writes nothing beside it."""
    if any(os.path.lexists(path + suffix) for suffix in ("-wal", "-shm", "-journal")):
        return False
    try:
        connection = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
        try:
            return not any(connection.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                           for table in ("studies", "history", "submissions"))
        finally:
            connection.close()
    except sqlite3.Error:   # not a ledger (or not a database at all)
        return False


def discard(staged: str) -> None:
    """Remove a staged ledger that will not be published (what failed already says why)."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.unlink(staged + suffix)
        except FileNotFoundError:
            pass
