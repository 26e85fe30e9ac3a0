"""The study inventory: study ids, study lists, dataset CSVs and the RSNA 2024 layout.

RSNA layout (the Kaggle competition's; docs/architecture.md, "Domain facts"):
`<split>_series_descriptions.csv` (study_id, series_id, series_description) and
`<split>_images/<study>/<series>/<instance>.dcm`. The series type comes from the
CSV only: the DICOM SeriesDescription tag is de-identified. The other layouts
(bids.py, manifest.py, dicom_tree.py) share the id rule, the CSV reader and the
study-list rule kept here; inventory.py picks the layout.
"""
from __future__ import annotations

import csv
import itertools
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Container, Iterable, Iterator, Mapping, NamedTuple, TypeVar

from .errors import StudyError
from .ledger import StudyRow

SAGITTAL_T2 = "Sagittal T2/STIR"
# Ids become file and folder names. Every id is a label of letters, digits, '.', '_' and '-' that starts
# with a letter or digit and holds no '..': never a path separator, a parent folder, a hidden file or an
# option. That admits BIDS ids (sub-X_ses-Y), DICOM UIDs and a manifest's names.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# RSNA's ids (and every id of the RSNA layout) are plain decimal numbers, as they always were.
RSNA_ID_PATTERN = re.compile(r"[0-9]{1,20}")
SERIES_COLUMNS = ("study_id", "series_id", "series_description")
# One string shared by every study with one such series (most of them), not a copy each.
ONLY_SERIES = f"the only {SAGITTAL_T2} series"
T = TypeVar("T")


class DatasetError(StudyError):
    """A problem with the dataset as a whole (a CSV, the study list): `init` stops."""


def is_valid_id(value: str) -> bool:
    """May this id become a file or folder name? (fullmatch: a trailing newline is not allowed either)"""
    return bool(ID_PATTERN.fullmatch(value)) and ".." not in value


def is_rsna_id(value: str) -> bool:
    """A plain decimal number, the only id the RSNA layout has (RSNA_ID_PATTERN; not a regex here: init checks
    three million of them)."""
    return value.isascii() and value.isdigit() and len(value) <= 20


def printable_id(value: str) -> str:
    """A bounded, printable stand-in for an id that failed validation (never used in a path)."""
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 60 else text[:57] + "..."


class Series(NamedTuple):
    """One series of a study as the series CSV lists it."""

    series_id: str
    description: str


class SeriesTable(Mapping[str, list[Series]]):
    """study id -> its series, as read_series_table found them, in a form that a million studies fit in.

    One string per study, `,SERIES:N,SERIES:N,` (N: the description's place in `descriptions`), "" for a study
    not read: a list of Series tuples per study, about 0.5 KB of objects, is one string of about 90 bytes (the
    table of a million studies: 0.23 GB, where a list per study took most of init's gigabyte). RSNA's ids are plain
    numbers (is_rsna_id) and N is a number, so `,SERIES:N,` can match only that series with that description.
    Read as a Mapping it gives Series lists (made on each lookup); init reads `encoded` itself.
    """

    def __init__(self, encoded: dict[str, str], descriptions: list[str]) -> None:
        self.encoded = encoded
        self.descriptions = descriptions
        t2 = descriptions.index(SAGITTAL_T2) if SAGITTAL_T2 in descriptions else None
        self._t2_code = None if t2 is None else f":{t2},"

    def __getitem__(self, study: str) -> list[Series]:
        return self.decode(self.encoded[study])

    def __iter__(self) -> Iterator[str]:
        return iter(self.encoded)

    def __len__(self) -> int:
        return len(self.encoded)

    def __contains__(self, study: object) -> bool:
        return study in self.encoded

    def decode(self, value: str) -> list[Series]:
        series = []
        for item in value[1:-1].split(",") if value else ():
            series_id, _, code = item.partition(":")
            series.append(Series(series_id, self.descriptions[int(code)]))
        return series

    def only_sagittal_t2(self, value: str) -> str | None:
        """The series id when the study (its `encoded` value) has exactly one Sagittal T2/STIR series, else None:
        what select_series would choose, without making its Series list (a million studies)."""
        code = self._t2_code
        at = value.find(code) if code else -1
        if at < 0 or value.find(code, at + 1) >= 0:
            return None
        return value[value.rfind(",", 0, at) + 1:at]


@dataclass
class Inventory:
    """What `init` found: one row per study, and what to tell the user about the dataset."""

    rows: Collection[StudyRow]    # a list, or (RSNA layout) StudyRows: made on each pass, never all held
    layout: str                   # rsna | bids | manifest | dicom
    source: Path                  # what was read: the series CSV, the manifest, the dataset folder
    wanted: str                   # what a pending study has, for the summary ("a Sagittal T2/STIR series")
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)    # facts for the summary (header reads, the cache)
    duplicates: int = 0           # identical CSV rows read once
    known: int = 0                # listed studies already in the ledger, left out of `rows` (RSNA layout)

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
            import numpy as np   # here only: init reads no .npy list most days, and numpy's import is a tenth of it

            array = np.load(path, allow_pickle=False)
            if array.size == 0 and np.issubdtype(array.dtype, np.number):
                return []   # np.save([]) writes float64: an empty list has no integer dtype to show
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                raise DatasetError("dataset.study_list",
                                   f"{path}: expected a 1-D integer array, found {array.dtype} {array.shape}")
            return [str(int(v)) for v in array]
        if suffix == ".csv":
            _, rows = read_csv(path, ("study_id",), error_class="dataset.study_list")
            return [row["study_id"] for _, row in rows if row["study_id"]]
        if suffix in (".txt", ".lst", ""):
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    except DatasetError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError("dataset.study_list", f"{path}: cannot read the study list: {exc}") from None
    raise DatasetError("dataset.study_list", f"{path}: unknown study list type {suffix!r}; use .npy, .csv or .txt")


def read_csv(path: Path, required: Iterable[str], *, error_class: str = "dataset.csv",
             ) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(columns, [(line number, row)]) of a CSV; DatasetError (`error_class`) naming the file otherwise.

    UTF-8 with or without a byte order mark (Excel writes one, and it would hide the first column's
    name), every field stripped; an encoding or csv-module error is one line naming the file and line.
    """
    columns, rows = iter_csv(path, required, error_class=error_class)
    return columns, [(line, dict(zip(columns, fields))) for line, fields in rows]


def iter_csv(path: Path, required: Iterable[str], *, error_class: str = "dataset.csv",
             ) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """read_csv's rules, streamed: (columns, an iterator of (line number, the row's stripped fields in column
    order)). A short row's missing fields are empty, extra fields dropped. Nothing is held: three million
    rows as dicts were most of init's time and memory."""
    columns, handle, reader = _open_csv(path, required, error_class)
    width = len(columns)

    def rows() -> Iterator[tuple[int, list[str]]]:
        with handle:
            try:
                for fields in reader:
                    if not fields:   # a blank line is no row (as DictReader had it)
                        continue
                    if len(fields) != width:
                        fields = (fields + [""] * width)[:width]
                    yield reader.line_num, list(map(str.strip, fields))
            except (UnicodeDecodeError, csv.Error) as exc:
                raise _csv_error(Path(path), reader, exc, error_class) from None

    return columns, rows()


def _open_csv(path: Path, required: Iterable[str], error_class: str) -> tuple[list[str], Any, Any]:
    """(stripped column names, the open file, its csv reader past the header) of a CSV with the `required`
    columns (read_csv's rules); DatasetError naming the file otherwise."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(error_class, f"{path}: cannot open: {exc.strerror or exc}") from None
    reader = csv.reader(handle)
    try:
        columns = [c.strip() for c in next(reader, [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        handle.close()
        raise _csv_error(path, reader, exc, error_class) from None
    missing = [c for c in required if c not in columns]
    if missing:
        handle.close()
        raise DatasetError(error_class, f"{path}: missing column(s) {', '.join(missing)}")
    return columns, handle, reader


def _csv_error(path: Path, reader: Any, exc: Exception, error_class: str) -> DatasetError:
    if isinstance(exc, UnicodeDecodeError):
        return DatasetError(error_class, f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot "
                                         "be decoded); save it as UTF-8")
    return DatasetError(error_class, f"{path} line {reader.line_num}: not a readable CSV ({exc})")


def read_series_table(csv_path: Path, skip: Container[str] = frozenset(),
                      ) -> tuple[SeriesTable, list[str], int]:
    """(study id -> its series, warnings, duplicate rows) from `<split>_series_descriptions.csv`.

    Rows with bad ids become warnings; a row repeated word for word is read once and counted. A study in
    `skip` (one the ledger has) is listed with no series (its rows are not looked at).
    """
    columns, handle, reader = _open_csv(csv_path, SERIES_COLUMNS, "dataset.csv")
    width = len(columns)
    i_study, i_series, i_description = (columns.index(c) for c in SERIES_COLUMNS)
    encoded: dict[str, str] = {}
    descriptions: list[str] = []
    codes: dict[str, str] = {}   # description -> ":N," (SeriesTable)
    warnings: list[str] = []
    duplicates = 0
    # Three million rows, so iter_csv's rules are spelled out here on the reader's own lists (a generator step and
    # a list of every field per row were a third of this loop). A study's id is checked at its first row only
    # (every id in `encoded` passed).
    with handle:
        try:
            for fields in reader:
                if len(fields) != width:
                    if not fields:   # a blank line is no row
                        continue
                    fields = (fields + [""] * width)[:width]
                study, series = fields[i_study].strip(), fields[i_series].strip()
                listed = encoded.get(study)
                if not (is_rsna_id(series) and (listed is not None or is_rsna_id(study))):
                    warnings.append(f"{csv_path.name} line {reader.line_num}: ignored row with a bad id "
                                    f"(study {printable_id(study)!r}, series {printable_id(series)!r})")
                    continue
                if listed == "":   # a study the ledger has (`skip`): its other rows are not looked at
                    continue
                description = fields[i_description].strip()
                code = codes.get(description)
                if code is None:
                    code = codes[description] = f":{len(descriptions)},"
                    descriptions.append(description)
                if listed is None:
                    encoded[study] = "" if study in skip else "," + series + code
                else:
                    # A duplicate repeats a row of the same study: its few rows are the only ones to look at.
                    item = series + code
                    if "," + item in listed:
                        duplicates += 1
                    else:
                        encoded[study] = listed + item
        except (UnicodeDecodeError, csv.Error) as exc:
            raise _csv_error(Path(csv_path), reader, exc, "dataset.csv") from None
    return SeriesTable(encoded, descriptions), warnings, duplicates


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
        return candidates[0], ONLY_SERIES
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


def pick_studies(found: Mapping[str, T], study_list: list[str] | None, limit: int | None, *, source: str,
                 make_row: Callable[[str, T], StudyRow], id_ok: Callable[[str], bool] = is_valid_id,
                 id_rule: str = "not a safe study id (letters, digits, '.', '_', '-'; no '..')",
                 order: Callable[[str], object] = str) -> list[StudyRow]:
    """One row per wanted study: the listed ones (or every study found, in `order`), each once.

    An id that breaks the rule is skipped as input.bad_id and never reaches a path; a listed study the
    dataset lacks is skipped as input.no_series; every other one becomes `make_row(id, found[id])`.
    """
    return list(pick_new_studies(found, study_list, limit, source=source, make_row=make_row, id_ok=id_ok,
                                 id_rule=id_rule, order=order)[0])


_MISSING: Any = object()


class StudyRows(Collection[StudyRow]):
    """pick_studies' rows, made afresh on each pass over them and never held: init streams a million of them into
    the ledger (as StudyRow objects all at once they were a quarter of a gigabyte). `ids`: what `row` makes each
    row from (a study id, or an (id, what the dataset has for it) pair)."""

    def __init__(self, ids: list[Any], row: Callable[..., StudyRow], *, pairs: bool = False) -> None:
        self.ids = ids
        self.row = row
        self.pairs = pairs   # `row` takes a pair's two values as its arguments

    def __iter__(self) -> Iterator[StudyRow]:
        return itertools.starmap(self.row, self.ids) if self.pairs else map(self.row, self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, row: object) -> bool:
        return any(r == row for r in self)


def pick_new_studies(found: Mapping[str, T], study_list: list[str] | None, limit: int | None, *, source: str,
                     make_row: Callable[[str, T], StudyRow], id_ok: Callable[[str], bool] = is_valid_id,
                     id_rule: str = "not a safe study id (letters, digits, '.', '_', '-'; no '..')",
                     order: Callable[[str], object] = str,
                     known: Container[str] = frozenset(), checked: bool = False) -> tuple[StudyRows, int]:
    """pick_studies, leaving out the wanted studies in `known` (the ledger's): (rows, how many were known).
    `checked`: every id in `found` passed id_ok already and has no space around it."""
    def bad_id(study: str) -> StudyRow:
        shown = printable_id(study)
        return StudyRow(study_id=shown, skip_class="input.bad_id", skip_message=f"study {shown!r}: {id_rule}")

    def row(study: str) -> StudyRow:
        if not id_ok(study):
            return bad_id(study)
        value = found.get(study, _MISSING)   # one look-up, not two: a million ids in random order
        if value is _MISSING:
            return StudyRow(study_id=study, skip_class="input.no_series", skip_message=f"study {study}: not in {source}")
        return make_row(study, value)

    def pair_row(study: str, value: T) -> StudyRow:
        return make_row(study, value) if id_ok(study) else bad_id(study)

    if study_list is None and (checked or all(map(operator.is_, map(str.strip, found), found))):
        # Every study of the dataset, none with a space to strip (strip gave each back as it was), so each is there
        # once already (the loop below, a set of a million ids, has nothing to do); in `order`, each with its
        # value (sorted with it: a look-up per study, in random order, was a fifth of making a million rows).
        if limit is None:
            # The ledger's studies are only counted: not sorted.
            pairs = [pair for pair in found.items() if pair[0] not in known] if known else list(found.items())
            already = len(found) - len(pairs)
            pairs.sort(key=lambda pair: order(pair[0]))
        else:
            pairs = sorted(found.items(), key=lambda pair: order(pair[0]))[:limit]
            listed = len(pairs)
            if known:
                pairs = [pair for pair in pairs if pair[0] not in known]
            already = listed - len(pairs)
        return StudyRows(pairs, make_row if checked else pair_row, pairs=True), already
    wanted = study_list if study_list is not None else sorted(found, key=order)
    if limit is not None:
        wanted = wanted[:limit]
    ids = []
    seen: set[str] = set()
    already = 0
    for raw in wanted:
        study = raw.strip()
        if study in seen:
            continue
        seen.add(study)
        if study in known:
            already += 1
        else:
            ids.append(study)
    return StudyRows(ids, row), already


def build_inventory(dataset: Path, *, split: str = "train", study_list: list[str] | None = None,
                    limit: int | None = None, known: Container[str] = frozenset()) -> Inventory:
    """RSNA layout: one StudyRow per study (the listed ones, or every study in the CSV), pending or skipped.

    Studies in `known` (already in the ledger, which keeps them as they are) are counted, not looked at. The rows
    are made as they are read (StudyRows), from the CSV's table kept in its compact form (SeriesTable).
    """
    dataset = Path(dataset).resolve()
    csv_path = find_series_csv(dataset, split)
    table, warnings, duplicates = read_series_table(csv_path, skip=known)
    images_dir = dataset / f"{split}_images"
    images = str(images_dir)   # joined as text: a Path per study was a third of init's time

    def row(study: str, value: str) -> StudyRow:
        series_id = table.only_sagittal_t2(value)
        if series_id is not None:   # what select_series chooses for one candidate, without its Series list
            # The same path as series_folder() gives (ids are plain numbers, checked above).
            return StudyRow(study, series_id, SAGITTAL_T2, f"{images}/{study}/{series_id}", ONLY_SERIES)
        chosen, reason = select_series(study, table.decode(value), images_dir)
        if chosen is None:
            return StudyRow(study_id=study, skip_class="input.no_series", skip_message=reason)
        return StudyRow(study, chosen.series_id, chosen.description, f"{images}/{study}/{chosen.series_id}",
                        reason)

    rows, already = pick_new_studies(table.encoded, study_list, limit, source=csv_path.name, make_row=row,
                                     id_ok=is_rsna_id, id_rule="not a plain decimal study id", order=int, known=known,
                                     checked=True)
    return Inventory(rows=rows, layout="rsna", source=csv_path, wanted=f"a {SAGITTAL_T2} series",
                     warnings=warnings, duplicates=duplicates, known=already)
