"""The study inventory: RSNA 2024 layout, study lists and series selection.

Layout (the Kaggle competition's; docs/architecture.md, "Domain facts"):
`<split>_series_descriptions.csv` (study_id, series_id, series_description) and
`<split>_images/<study>/<series>/<instance>.dcm`. The series type comes from the
CSV only: the DICOM SeriesDescription tag is de-identified.
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import StudyError
from .ledger import StudyRow

SAGITTAL_T2 = "Sagittal T2/STIR"
# Ids become folder names: only plain decimal numbers ever reach a path.
ID_PATTERN = re.compile(r"^[0-9]{1,20}$")
SERIES_COLUMNS = ("study_id", "series_id", "series_description")


class DatasetError(StudyError):
    """A problem with the dataset as a whole (a CSV, the study list): `init` stops."""


def is_valid_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))


def printable_id(value: str) -> str:
    """A bounded, printable stand-in for an id that failed validation (never used in a path)."""
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class Series:
    series_id: str
    description: str


@dataclass
class Inventory:
    rows: list[StudyRow]
    csv_path: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def pending(self) -> list[StudyRow]:
        return [r for r in self.rows if not r.skip_class]

    @property
    def skipped(self) -> list[StudyRow]:
        return [r for r in self.rows if r.skip_class]


def load_study_list(path: Path) -> list[str]:
    """Study ids from a .npy (integer array), .csv (a study_id column) or .txt (one per line) file."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.size == 0 and np.issubdtype(array.dtype, np.number):
                return []   # np.save([]) writes float64: an empty list has no integer dtype to show
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                raise DatasetError("dataset.study_list",
                                   f"{path}: expected a 1-D integer array, found {array.dtype} {array.shape}")
            return [str(int(v)) for v in array]
        if suffix == ".csv":
            # utf-8-sig: Excel starts its CSVs with a byte order mark, which would hide the study_id header.
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                if "study_id" not in (reader.fieldnames or []):
                    raise DatasetError("dataset.study_list", f"{path}: no study_id column")
                return [row["study_id"].strip() for row in reader if (row.get("study_id") or "").strip()]
        if suffix in (".txt", ".lst", ""):
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    except DatasetError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError("dataset.study_list", f"{path}: cannot read the study list: {exc}") from None
    raise DatasetError("dataset.study_list", f"{path}: unknown study list type {suffix!r}; use .npy, .csv or .txt")


def read_series_table(csv_path: Path) -> tuple[dict[str, list[Series]], list[str]]:
    """study id -> its series, from `<split>_series_descriptions.csv`; rows with bad ids become warnings."""
    try:
        handle = csv_path.open(newline="")
    except OSError as exc:
        raise DatasetError("dataset.csv", f"{csv_path}: cannot open: {exc.strerror}") from None
    table: dict[str, list[Series]] = defaultdict(list)
    warnings: list[str] = []
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SERIES_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError("dataset.csv", f"{csv_path.name}: missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            study, series = (row["study_id"] or "").strip(), (row["series_id"] or "").strip()
            if not (is_valid_id(study) and is_valid_id(series)):
                warnings.append(f"{csv_path.name} line {line}: ignored row with a bad id "
                                f"(study {printable_id(study)!r}, series {printable_id(series)!r})")
                continue
            table[study].append(Series(series, (row["series_description"] or "").strip()))
    return table, warnings


def count_slices(series_dir: Path) -> int:
    try:
        return sum(1 for p in series_dir.iterdir() if p.suffix.lower() == ".dcm")
    except OSError:
        return 0


def select_series(study_id: str, series: list[Series], images_dir: Path) -> tuple[Series | None, str]:
    """The study's Sagittal T2/STIR series and why it was chosen; never another type in its place."""
    candidates = [s for s in series if s.description == SAGITTAL_T2]
    if not candidates:
        found = ", ".join(sorted({s.description or "(empty)" for s in series})) or "none"
        return None, f"study {study_id}: no {SAGITTAL_T2} series (found: {found})"
    if len(candidates) == 1:
        return candidates[0], f"the only {SAGITTAL_T2} series"
    # Several: the fullest stack is the most likely complete acquisition; ties go to the
    # later series (a repeat scan is usually the better one).
    counted = [(count_slices(images_dir / study_id / s.series_id), int(s.series_id), s) for s in candidates]
    slices, _, best = max(counted, key=lambda t: (t[0], t[1]))
    listing = ", ".join(f"{s.series_id} ({n} slices)" for n, _, s in counted)
    return best, f"{len(candidates)} {SAGITTAL_T2} series: {listing}; chose {best.series_id}, most slices then highest id"


def series_folder(dataset: Path, split: str, study_id: str, series_id: str) -> Path:
    """Where a series' DICOM files live in the RSNA layout (ids validated before they get here)."""
    return Path(dataset) / f"{split}_images" / study_id / series_id


def find_series_csv(dataset: Path, split: str) -> Path:
    return Path(dataset) / f"{split}_series_descriptions.csv"


def build_inventory(dataset: Path, *, split: str = "train", study_list: list[str] | None = None,
                    limit: int | None = None) -> Inventory:
    """One StudyRow per study: the listed ones (or every study in the CSV), pending or skipped with a reason."""
    dataset = Path(dataset).resolve()
    csv_path = find_series_csv(dataset, split)
    table, warnings = read_series_table(csv_path)
    images_dir = dataset / f"{split}_images"
    wanted = study_list if study_list is not None else sorted(table, key=int)
    if limit is not None:
        wanted = wanted[:limit]
    rows: list[StudyRow] = []
    seen: set[str] = set()
    for raw in wanted:
        study = raw.strip()
        if study in seen:
            continue
        seen.add(study)
        if not is_valid_id(study):
            shown = printable_id(study)
            rows.append(StudyRow(study_id=shown, skip_class="input.bad_id",
                                 skip_message=f"study {shown!r}: not a plain decimal study id"))
            continue
        if study not in table:
            rows.append(StudyRow(study_id=study, skip_class="input.no_series",
                                 skip_message=f"study {study}: not in {csv_path.name}"))
            continue
        chosen, reason = select_series(study, table[study], images_dir)
        if chosen is None:
            rows.append(StudyRow(study_id=study, skip_class="input.no_series", skip_message=reason))
            continue
        rows.append(StudyRow(study_id=study, series_id=chosen.series_id, series_description=chosen.description,
                             input_path=str(series_folder(dataset, split, study, chosen.series_id)), selection_reason=reason))
    return Inventory(rows=rows, csv_path=csv_path, warnings=warnings)
