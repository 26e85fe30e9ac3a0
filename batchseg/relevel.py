"""`batchseg levels`: the level check (levels.py) again for done studies, from their published outputs.

Annotations can arrive after the run, so this runs no model. For each done study it reads the metadata,
checks that the instance mask (and the semantic mask, when there is one) are the files whose checksums the
metadata recorded, measures them again with the same `measure` as the pipeline, places the study's annotated
points through the DICOM headers of the series the run converted, and compares. It rewrites one file per
study, the metadata, atomically (files.write_json: a temporary file renamed onto it), and in it only the
`levels` object and the level check's own caveat and candidate inside `lstv` (marked `level check`); every
other output file is only read, and every other key of the metadata is written back as it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .annotations import AnnotationTable, StudyAnnotations
from .dataset import series_folder
from .errors import StudyError
from .files import write_json
from .findings_words import summarize
from .levels import check_study, lstv_with_levels
from .measures import measure, read_label_map
from .outputs import output_paths
from .pipeline import sha256

# The outputs the check measures: their bytes must be the ones the metadata's checksums name.
MASKS = ("vert_mask", "spine_mask")


@dataclass
class Recheck:
    """One study: its new `levels` object, or why it could not be checked again."""

    study_id: str
    levels: dict[str, Any] | None = None
    error: str | None = None
    rewritten: bool = False                  # the metadata file changed
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"study_id": self.study_id, "levels": self.levels}
        if self.error:
            out["error"] = self.error
        if self.notes:
            out["notes"] = self.notes
        out["metadata_rewritten"] = self.rewritten
        return out


def recheck_study(out_dir: Path, study_id: str, annotations: StudyAnnotations, *,
                  dataset: Path | None = None, split: str = "train", series_id: str | None = None) -> Recheck:
    """Check one done study again and rewrite its metadata's `levels` and `lstv` when they change."""
    result = Recheck(study_id)
    paths = output_paths(Path(out_dir), study_id)
    meta_path = paths["metadata"]
    try:
        raw = meta_path.read_bytes()
        meta = json.loads(raw)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        result.error = f"metadata missing: {meta_path}"
        return result
    except (OSError, ValueError) as exc:
        result.error = f"metadata unreadable: {meta_path}: {exc}"
        return result
    outputs = meta.get("outputs") if isinstance(meta.get("outputs"), dict) else {}
    checksums = meta.get("checksums") if isinstance(meta.get("checksums"), dict) else {}
    if "vert_mask" not in outputs:
        result.error = "the metadata lists no instance mask (vert_mask)"
        return result
    for name in MASKS:
        if name not in outputs:
            continue
        if not paths[name].is_file():
            result.error = f"{name} missing: {paths[name]}"
            return result
        if checksums.get(name) and sha256(paths[name]) != checksums[name]:
            result.error = (f"{paths[name].name} differs from the checksum its metadata recorded: the outputs "
                            "changed since the run; not checked")
            return result

    segmenter = meta.get("segmenter") if isinstance(meta.get("segmenter"), dict) else {}
    anatomical = segmenter.get("labels_anatomical") is not False
    try:
        labels, affine = read_label_map(paths["vert_mask"])
        spine = read_label_map(paths["spine_mask"])[0] if "spine_mask" in outputs else None
        sequence = measure(labels, affine, spine=spine, labels_anatomical=anatomical).sequence
    except StudyError as exc:
        result.error = str(exc)
        return result
    stored = meta.get("lstv") if isinstance(meta.get("lstv"), dict) else None
    if stored is not None and isinstance(stored.get("sequence"), list) and stored["sequence"] != sequence.names:
        made_by = (meta.get("versions") or {}).get("batchseg", "another version") \
            if isinstance(meta.get("versions"), dict) else "another version"
        result.notes.append(f"the sequence measured now differs from the one the metadata holds (written by "
                            f"batchseg {made_by}): the check uses the one measured now")

    conversion = (meta.get("input") or {}).get("conversion") if isinstance(meta.get("input"), dict) else None
    series_uid = conversion.get("series_uid") if isinstance(conversion, dict) else None
    series_dir = _series_dir(meta, dataset, split, study_id, series_id)
    levels = check_study(annotations, series_dir, sequence, series_uid=series_uid or None).to_json()
    result.levels = levels
    updated = {**meta, "lstv": lstv_with_levels(stored, levels), "levels": levels}
    if stored is None:
        updated.pop("lstv")
    if updated == meta:
        return result
    # A run that republished the study meanwhile wrote a new metadata file: never write back over it.
    try:
        unchanged = meta_path.read_bytes() == raw
    except OSError:
        unchanged = False
    if not unchanged:
        result.levels = None
        result.error = "the metadata changed while it was being checked (the study ran again?): left as it is"
        return result
    write_json(meta_path, updated)
    result.rewritten = True
    return result


def _series_dir(meta: dict[str, Any], dataset: Path | None, split: str, study_id: str,
                series_id: str | None) -> Path | None:
    """The folder the run converted (its metadata says), else where the project's dataset keeps the series."""
    given = meta.get("input") if isinstance(meta.get("input"), dict) else {}
    # The metadata says {"kind": "dicom_folder", "path": ...} (inputs.StudySource); older runs said series_dir.
    recorded = given.get("path") if given.get("kind") == "dicom_folder" else given.get("series_dir")
    if isinstance(recorded, str) and recorded and Path(recorded).is_dir():
        return Path(recorded)
    if dataset is not None and series_id:
        return series_folder(dataset, split, study_id, series_id)
    return Path(recorded) if isinstance(recorded, str) and recorded else None


def recheck_studies(out_dir: Path, rows: list[dict[str, Any]], table: AnnotationTable, *,
                    dataset: Path | None = None, split: str = "train") -> tuple[list[Recheck], dict[str, Any]]:
    """Every listed done study (ledger rows) checked again; and the summary (`batchseg levels --json`)."""
    results = [recheck_study(out_dir, str(row["study_id"]),
                             table.for_study(str(row["study_id"]), row.get("series_id")),
                             dataset=dataset, split=split, series_id=row.get("series_id")) for row in rows]
    summary = summarize(r.levels.get("verdict") if r.levels else None for r in results)
    summary.update(annotation_file=str(table.path), annotation_file_usable=table.usable,
                   rows_skipped=table.rows_skipped, warnings=table.warnings(),
                   errors=[{"study_id": r.study_id, "error": r.error} for r in results if r.error],
                   metadata_rewritten=sum(r.rewritten for r in results))
    return results, summary
