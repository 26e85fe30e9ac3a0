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
def open_atomic(path: Path, mode: str = "w", *, permissions: int = 0o666) -> Iterator[IO[Any]]:
    """A new file that replaces `path` only when the block ends without an error ("w" text, "wb" bytes).

    The data goes to a temporary file beside `path` (same folder, so the rename is atomic), is fsynced, and is
    renamed onto `path`: readers see the old file or the whole new one, never a part. An error midway (also a
    KeyboardInterrupt) leaves the old file as it was and no temporary file behind. The temporary name is unique
    and opened with O_EXCL (which never follows a planted symlink), so concurrent writers of one path never write
    into each other's file; the last rename wins, and it replaces a link at `path` itself, never its target.
    The folder must exist. `permissions` pass through the umask, as for any new file (mkstemp would force 0600).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, permissions)
    try:
        text = {} if mode == "wb" else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **text) as handle:
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


def write_atomic(path: Path, content: str | Iterable[str], *, permissions: int = 0o666) -> Path:
    """Write text (one string or an iterable of chunks) to `path` through `open_atomic`, creating its folder.

    A failure midway (also inside the chunk iterator) leaves the old file as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = [content] if isinstance(content, str) else content
    with open_atomic(path, permissions=permissions) as handle:
        for chunk in chunks:
            handle.write(chunk)
    return path


def write_json(path: Path, data: Any) -> Path:
    """`data` as indented JSON with a final newline, written atomically."""
    return write_atomic(path, json.dumps(data, indent=2) + "\n")
