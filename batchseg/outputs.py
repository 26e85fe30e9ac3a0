"""A done study's outputs: where each file lies, what the report reads of them, and the findings digest.

The digest (`findings_digest`) is what `read_study_files` reads of a study's metadata and vertebra labels,
kept in the ledger's `findings` column when the study is done, with each of the two files' identity
(inode, size in bytes, modification time in ns). A report over a million studies then reads one ledger
column instead of two million files, and `files_from_digest` uses it only while both files are still
exactly the ones digested: a rewritten (`batchseg levels`), edited, replaced, removed, moved or copied file
no longer matches, and the report reads that study's files again. A digest can be stale; it is never
believed when it is.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Any

from . import json_text
from .errors import StudyError, one_line, printable
from .labels import VERTEBRA_NAMES


def file_name_part(study: str) -> str:
    """`study` if it can be part of a file name in the output folders, else StudyError input.bad_id.

    The worker checks ids against the dataset's rule before a study starts; this is the output
    layout's own guard, for every caller: whatever the ledger holds, nothing leaves its folder.
    """
    if not study or study.startswith(".") or any(c in study for c in "/\\\0") or not study.isprintable():
        raise StudyError("input.bad_id", f"study {printable(study)!r}: not usable as part of a file name")
    return study


def output_paths(out_dir: Path, study: str) -> dict[str, Path]:
    """Final location of every output of one study: the seed's names (docs/architecture.md, "Output layout")."""
    file_name_part(study)
    return {
        "nifti": out_dir / "nifti" / f"{study}_T2w.nii.gz",
        "vert_mask": out_dir / "segmentations" / f"{study}_seg-vert_msk.nii.gz",
        "spine_mask": out_dir / "segmentations" / f"{study}_seg-spine_msk.nii.gz",
        "ctd": out_dir / "segmentations" / f"{study}_ctd.json",
        "centroids": out_dir / "centroids" / f"{study}_centroids.json",
        "vertebra_labels": out_dir / "centroids" / f"{study}_vertebra_labels.json",
        "qc": out_dir / "qc" / f"{study}_qc.png",
        "qc_segmenter": out_dir / "qc" / f"{study}_spineps.png",
        "metadata": out_dir / "metadata" / f"{study}_metadata.json",
    }


# The names of one study's outputs (nifti, vert_mask, ..., metadata), in the pipeline's order.
OUTPUT_NAMES = tuple(output_paths(Path("."), "0"))


class OutputPaths(Mapping[str, str]):
    """One study's output paths (name -> path as text), each made when asked: a report over a million studies
    keeps tens of thousands of them, and nine paths apiece were a third of its memory.

    `template` is the results folder's layout (_layout_template: name -> folder with its separator, and the
    file name after the study id), `names` the outputs the study has, in the layout's order.
    """

    __slots__ = ("template", "study_id", "names")

    def __init__(self, template: dict[str, tuple[str, str]], study_id: str, names: Iterable[str]) -> None:
        self.template, self.study_id = template, study_id
        self.names = _in_layout_order(tuple(names))

    def __getitem__(self, name: str) -> str:
        if name not in self.names:
            raise KeyError(name)
        return _path(self.template, name, self.study_id)

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self.names else default

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"OutputPaths({dict(self)!r})"


@lru_cache(maxsize=1024)
def _in_layout_order(names: tuple[str, ...]) -> tuple[str, ...]:
    """The outputs of the layout among `names`, in the layout's order (every results folder's layout has the
    same names in the same order: output_paths)."""
    return tuple(name for name in OUTPUT_NAMES if name in names)


@dataclass(slots=True)
class StudyFiles:
    """What the report needs from one done study's files (the rest of the metadata is dropped at once)."""

    metadata_path: str | None = None
    segmenter: dict[str, Any] = field(default_factory=dict)   # name, note, labels_anatomical, ...
    lstv: dict[str, Any] | None = None
    seconds: float | None = None
    batchseg_version: str | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)  # output name -> absolute path (OutputPaths)
    vertebra_labels: dict[str, str] | None = None
    levels: dict[str, Any] | None = None                       # the level check (None: not in the metadata)
    problems: list[str] = field(default_factory=list)


@lru_cache(maxsize=4)
def _layout_template(out_dir: str) -> dict[str, tuple[str, str]]:
    """output_paths() once per results folder: each output as (folder and separator, name after the id).

    Every output's file name starts with the study id (docs/architecture.md, "Output layout").
    """
    template = {}
    for name, path in output_paths(Path(out_dir), "x").items():
        assert path.name.startswith("x"), path
        template[name] = (str(path.parent) + os.sep, path.name[1:])
    return template


def _path(template: dict[str, tuple[str, str]], name: str, study_id: str) -> str:
    """Output `name` of `study_id` from _layout_template's (folder, rest)."""
    folder, rest = template[name]
    return folder + study_id + rest


# The metadata's `lstv` fields and the types the pipeline writes (lstv.LstvFindings; None is allowed).
LSTV_FIELD_TYPES = {"count_assessable": bool, "count_reason": str, "lumbar_count": int, "pattern": str,
                    "candidates": list, "caveats": list, "notes": list, "l6_present": bool, "t13_present": bool}
# The level check's fields the report reads (levels.py); of `details`, only the levels that did not agree.
LEVEL_FIELDS = ("verdict", "points", "matched", "shift", "max_distance_mm", "reason")
LEVEL_DETAIL_SHOWN = ("other_level", "no_disc_here", "not_placed")


def lstv_field_problems(lstv: dict[str, Any]) -> list[str]:
    """A line per `lstv` field whose type is not what the pipeline writes (a hand-edited or foreign file)."""
    problems = []
    for name, kind in LSTV_FIELD_TYPES.items():
        value = lstv.get(name)
        if value is None or value.__class__ is kind:   # the usual case, one test (JSON makes no subclasses)
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"metadata lstv.{name} is {type(value).__name__}, not {kind.__name__}: ignored")
    return problems


def _json_object(path: str, what: str, shown: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """The JSON object in `path`, or None and a line saying what is wrong with the file."""
    try:
        with open(path, "rb") as handle:   # bytes: json reads UTF-8 itself, without a text layer
            data = json.loads(handle.read())
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return data, ""
    except FileNotFoundError:
        return None, f"{what} missing: {shown or os.path.basename(path)}"
    except (OSError, ValueError, TypeError, RecursionError) as exc:   # RecursionError: absurdly deep nesting
        return None, f"{what} unreadable: {os.path.basename(path)}: {type(exc).__name__}: {one_line(exc, 200)}"


def read_study_files(out_dir: Path | str, study_id: str) -> StudyFiles:
    """Read one done study's metadata and vertebra labels; a missing or bad file becomes a problem, not a crash.

    Files are looked for where the project's `out` says, not at the paths the ledger recorded:
    a project folder that was moved or copied still reports on its own results.
    """
    return _read(out_dir, study_id, identify=False)[0]


def _read(out_dir: Path | str, study_id: str, *, identify: bool) -> tuple[StudyFiles, tuple[Any, Any]]:
    """read_study_files and, with `identify`, the identities of the two files read (None: not read, or it
    changed while it was read)."""
    files = StudyFiles()
    try:
        file_name_part(study_id)
    except StudyError as exc:   # a crafted ledger row: its id never becomes a path
        files.problems.append(exc.message)
        return files, (None, None)
    # The paths as text from a template: eight Path objects per study were a quarter of a large report.
    template = _layout_template(str(out_dir))
    meta_path = _path(template, "metadata", study_id)
    before = _identity(meta_path) if identify else None
    meta, problem = _json_object(meta_path, "metadata", shown=meta_path)
    if meta is None:
        files.problems.append(problem)
        return files, (None, None)
    files.metadata_path = meta_path
    get = meta.get
    if isinstance(segmenter := get("segmenter"), dict):
        files.segmenter = {k: v for k, v in segmenter.items() if isinstance(v, (str, bool, int, float))}
    lstv = get("lstv")
    files.lstv = lstv if isinstance(lstv, dict) else None
    if isinstance(levels := get("levels"), dict):
        files.levels = levels
    if isinstance(timings := get("timings"), dict):
        total = timings.get("total")
        files.seconds = float(total) if isinstance(total, (int, float)) and not isinstance(total, bool) else None
    if isinstance(versions := get("versions"), dict) and isinstance(version := versions.get("batchseg"), str):
        files.batchseg_version = version
    # Metadata is published last: the outputs it lists are all in place.
    if isinstance(names := get("outputs"), dict):
        files.outputs = OutputPaths(template, study_id, names)
    labels_path = _path(template, "vertebra_labels", study_id)
    labels_before = _identity(labels_path) if identify else None
    labels, problem = _json_object(labels_path, "vertebra labels")
    if labels is None:
        files.problems.append(problem)
    else:
        # JSON keys are text already; a value that is not text is made text (the usual file needs no copy).
        files.vertebra_labels = labels if all(map(isinstance, labels.values(), repeat(str))) \
            else {k: str(v) for k, v in labels.items()}
    if files.lstv is not None:
        files.problems += lstv_field_problems(files.lstv)
    if not identify:
        return files, (None, None)
    # An identity is only worth keeping if the file did not change while it was read.
    same = before is not None and before == _identity(meta_path)
    same_labels = labels_before is not None and labels_before == _identity(labels_path)
    return files, (before if same else None, labels_before if same_labels else None)


def _identity(path: str) -> list[int] | None:
    """The file's inode, size in bytes and modification time in ns: another file, or this one changed, differs.

    Outputs are renamed into place, so a rewrite is a new inode even within one clock tick.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _kept(mapping: dict[str, Any], names: tuple[str, ...] | dict[str, Any]) -> dict[str, Any]:
    """The named fields that hold something (a missing field reads as None or empty, the same to the report)."""
    return {k: mapping[k] for k in names if mapping.get(k) not in (None, [], {})}


# Vertebra-labels keys that name no vertebra: the other labels below 1000 written plainly (discs, endplates).
_NOT_VERTEBRAE = frozenset(str(n) for n in range(1000)) - {str(label) for label in VERTEBRA_NAMES}


def findings_digest(out_dir: Path | str, study_id: str) -> str | None:
    """The ledger's `findings` text for a done study: what the report reads of its files, and their identities.

    None when a file is missing, unreadable or changed while read (the report then reads the files).
    """
    files, (meta_id, labels_id) = _read(out_dir, study_id, identify=True)
    if meta_id is None or labels_id is None or files.vertebra_labels is None:
        return None
    # Of the vertebra labels, the vertebrae (the report names them and looks for L6 and T13), not discs or endplates.
    vertebrae = {k: v for k, v in files.vertebra_labels.items() if k not in _NOT_VERTEBRAE}
    digest: dict[str, Any] = {"id": [meta_id, labels_id], "segmenter": files.segmenter,
                              "outputs": list(files.outputs), "vertebra_labels": vertebrae}
    if files.lstv is not None:
        digest["lstv"] = _kept(files.lstv, LSTV_FIELD_TYPES)
    if files.levels is not None:
        levels = _kept(files.levels, LEVEL_FIELDS)
        details = files.levels.get("details")
        if isinstance(details, list):
            shown = [d for d in details if isinstance(d, dict) and d.get("status") in LEVEL_DETAIL_SHOWN]
            if shown:
                levels["details"] = shown
        digest["levels"] = levels
    if files.seconds is not None:
        digest["seconds"] = files.seconds
    if files.batchseg_version is not None:
        digest["batchseg"] = files.batchseg_version
    return json.dumps(digest, separators=(",", ":"))


def files_from_digest(out_dir: Path | str, study_id: str, text: str | None) -> StudyFiles | None:
    """What read_study_files would return, from the ledger's digest: None when there is none, it does not
    parse, or either file is not the one digested (then read the files)."""
    if not text:
        return None
    try:
        digest = json_text.loads(text)
        (meta_id, labels_id), names = digest["id"], digest["outputs"]
    except (ValueError, TypeError, KeyError):
        return None
    template = _layout_template(str(out_dir))
    meta_path = _path(template, "metadata", study_id)
    if _identity(meta_path) != meta_id or _identity(_path(template, "vertebra_labels", study_id)) != labels_id:
        return None
    lstv = digest.get("lstv")
    return StudyFiles(
        metadata_path=meta_path, segmenter=digest["segmenter"], lstv=lstv, seconds=digest.get("seconds"),
        batchseg_version=digest.get("batchseg"),
        outputs=OutputPaths(template, study_id, names),
        vertebra_labels=digest["vertebra_labels"], levels=digest.get("levels"),
        problems=lstv_field_problems(lstv) if lstv is not None else [])
