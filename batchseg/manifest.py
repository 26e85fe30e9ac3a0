"""A manifest: a CSV naming each study's input, the flexible layout for anything else.

Columns `study_id` and `path` (a DICOM series folder or a NIfTI file; a relative path is relative to
the CSV's folder), optional `series_id`: the SeriesInstanceUID to take from a folder that holds
several series (its headers are read at init, once per file through the header cache, and the
series' files listed for the workers). Ids follow the general id rule (dataset.is_valid_id). A row
repeated word for word is read once and counted; a study listed with two different inputs is skipped.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .dataset import DatasetError, Inventory, pick_studies, printable_id, read_csv
from .dicom_tree import HeaderCache, cache_path, describe, group_series, scan_tree
from .inputs import write_listing
from .ledger import StudyRow
from .nifti_input import is_nifti_name

COLUMNS = ("study_id", "path")


def build_inventory(csv_path: Path, project_dir: Path, *, study_list: list[str] | None = None,
                    limit: int | None = None) -> Inventory:
    csv_path = Path(csv_path).resolve()
    if csv_path.is_dir():
        raise DatasetError("dataset.layout", f"{csv_path}: a folder; a manifest is a CSV file (study_id,path)")
    columns, rows = read_csv(csv_path, COLUMNS)
    has_series = "series_id" in columns
    listed: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    warnings: list[str] = []
    duplicates = 0
    for line, row in rows:
        study, path, series = row["study_id"], row["path"], row.get("series_id", "") if has_series else ""
        if not study:
            warnings.append(f"{csv_path.name} line {line}: ignored row without a study_id")
        elif any((path, series) == (p, s) for _, p, s in listed[study]):
            duplicates += 1
        else:
            listed[study].append((line, path, series))
    cache = HeaderCache(cache_path(project_dir))

    def row_of(study: str, entries: list[tuple[int, str, str]]) -> StudyRow:
        if len(entries) > 1:
            lines = ", ".join(str(line) for line, _, _ in entries)
            return StudyRow(study_id=study, skip_class="input.no_series",
                            skip_message=f"study {study}: listed {len(entries)} times with different inputs in "
                                         f"{csv_path.name} (lines {lines}); list it once")
        line, path, series = entries[0]
        where = f"{csv_path.name} line {line}"
        if not path:
            return StudyRow(study_id=study, skip_class="input.no_series",
                            skip_message=f"study {study}: no path ({where})")
        source = (csv_path.parent / path).resolve()
        if not series:
            kind = "NIfTI" if is_nifti_name(source) else None
            return StudyRow(study_id=study, series_description=kind, input_path=str(source),
                            selection_reason=f"listed in {where}")
        return _series_row(study, source, series, where, project_dir, cache)

    picked = pick_studies(listed, study_list, limit, source=csv_path.name, make_row=row_of)
    cache.save()
    return Inventory(rows=picked, layout="manifest", source=csv_path, wanted="an input", warnings=warnings,
                     duplicates=duplicates)


def _series_row(study: str, folder: Path, series: str, where: str, project_dir: Path,
                cache: HeaderCache) -> StudyRow:
    """The files of one series of a folder that may hold several."""
    if not folder.is_dir():
        return StudyRow(study_id=study, skip_class="input.missing",
                        skip_message=f"study {study}: {folder} is not a folder, so it holds no series {series} "
                                     f"({where})")
    found = [s for group in group_series(scan_tree(folder, cache).images()).values() for s in group]
    chosen = next((s for s in found if s.series == series), None)
    if chosen is None:
        had = "; ".join(f"{s.series} {describe(s)}" for s in found) or "no DICOM images"
        return StudyRow(study_id=study, skip_class="input.no_series",
                        skip_message=f"study {study}: no series {printable_id(series)} in {folder} ({where}); "
                                     f"found: {had}")
    listing = write_listing(project_dir, study, series, folder, chosen.files)
    return StudyRow(study_id=study, series_id=series,
                    series_description=chosen.first.get("description") or chosen.first.get("protocol") or None,
                    input_path=str(listing), selection_reason=f"series {series} of {folder}, as {where} says: "
                                                              f"{describe(chosen)}")
