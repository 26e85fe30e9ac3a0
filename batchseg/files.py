"""Whole-file writes that readers never see half done: temporary file, fsync, rename."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_atomic(path: Path, content: str | Iterable[str]) -> Path:
    """Write text (one string or an iterable of chunks) to `path` through a temporary file and a rename.

    Readers see the old file or the whole new one, never a part; a failure midway
    (also inside the chunk iterator) leaves the old file as it was and no temporary
    file behind. The temporary name is unique, so concurrent writers of one path
    never write into each other's file; the last rename wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = [content] if isinstance(content, str) else content
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for any new file (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    """`data` as indented JSON with a final newline, written atomically."""
    return write_atomic(path, json.dumps(data, indent=2) + "\n")
