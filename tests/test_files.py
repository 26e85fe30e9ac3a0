"""files.py: atomic whole-file writes."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from batchseg.files import write_atomic, write_json


def test_write_atomic_never_shows_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old report")

    def chunks() -> Any:
        yield "<html>half"
        assert target.read_text() == "old report", "the target changed before the write finished"
        raise RuntimeError("renderer broke midway")

    with pytest.raises(RuntimeError):
        write_atomic(target, chunks())
    assert target.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"], "no temporary file left behind"

    old_umask = os.umask(0o022)
    try:
        write_atomic(target, iter(["new ", "report"]))
    finally:
        os.umask(old_umask)
    assert target.read_text() == "new report"
    assert target.stat().st_mode & 0o777 == 0o644, "the umask decides the mode, as for any new file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_write_atomic_takes_one_string_and_creates_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "notes.txt"
    assert write_atomic(target, "one\nstring\n") == target
    assert target.read_text() == "one\nstring\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["notes.txt"]


def test_concurrent_writers_of_one_path_never_mix(tmp_path: Path) -> None:
    target = tmp_path / "shared.txt"
    texts = [str(n) * 20_000 for n in range(8)]
    threads = [threading.Thread(target=write_atomic, args=(target, [t[:10_000], t[10_000:]])) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_text() in texts, "one writer's whole text, not a mixture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.txt"]


def test_write_json_is_indented_with_a_final_newline(tmp_path: Path) -> None:
    data: dict[str, Any] = {"b": [1, 2], "a": {"x": "é"}}
    path = write_json(tmp_path / "d.json", data)
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(data, indent=2) + "\n"
    assert json.loads(text) == data


def test_write_json_of_an_unserializable_value_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "d.json"
    target.write_text("{}\n")
    with pytest.raises(TypeError):
        write_json(target, {"x": object()})
    assert target.read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]
