"""Whole-file writes that readers never see half done: temporary file, fsync, rename."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def replacing(path: Path, *, mode: int = 0o666) -> Iterator[IO[bytes]]:
    """A binary file to fill; on a clean exit it is fsynced and renamed to `path`, else removed.

    The temporary file is created under a fresh unique name with O_EXCL, so a symbolic link
    planted at any name in the folder is never followed: O_EXCL refuses every existing name,
    links included. Concurrent writers of one path never write into each other's file; the
    last rename wins, and the rename replaces a link at `path` itself rather than its target.
    `mode` passes through the umask, as for any new file (mkstemp would force 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_atomic(path: Path, content: str | Iterable[str], *, mode: int = 0o666) -> Path:
    """Write text (one string or an iterable of chunks) to `path` through a temporary file and a rename.

    Readers see the old file or the whole new one, never a part; a failure midway
    (also inside the chunk iterator) leaves the old file as it was and no temporary
    file behind.
    """
    chunks = [content] if isinstance(content, str) else content
    with replacing(path, mode=mode) as handle:
        for chunk in chunks:
            handle.write(chunk.encode("utf-8"))
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    """`data` as indented JSON with a final newline, written atomically."""
    return write_atomic(path, json.dumps(data, indent=2) + "\n")
