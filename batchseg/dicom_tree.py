"""A PACS export as a dataset: a tree of DICOM files, any depth, any names, series mixed in folders.

One header read per file (pydicom, stop before the pixels, only the tags below), cached in the project
(`<project>/inventory/dicom_headers.json`, keyed by path, size and mtime, so a second `init` reads only
new or changed files). Files are grouped by StudyInstanceUID, then SeriesInstanceUID, never by folder
(docs/architecture.md, "Domain facts"); a study's id is its StudyInstanceUID. DICOMDIR files are ignored,
and so is every file that is not a DICOM image (counted; files with the DICOM preamble that cannot be read are named).

Per study the sagittal T2-weighted series is chosen by rule, and the reason stored:

* plane: of the slice normal from ImageOrientationPatient (an enhanced multi-frame file: the shared
  functional groups, else the first frame's), named by `dicom.plane_of`; a series is sagittal when more
  than half of its images are. Localizers (ImageType LOCALIZER, or named so) never count.
* weighting: keywords of SeriesDescription and ProtocolName: t1, flair, t2*, pd, diffusion words make
  it not T2 whatever else they say; stir/tirm mean STIR; t2 means T2; tse/fse alone (a turbo spin echo
  of unnamed weighting) are decided by the timings when there are any. Where the words are silent, an
  enhanced file's AcquisitionContrast, then the timings: InversionTime 100-300 ms STIR, >= 1500 ms
  FLAIR, else T1; EchoTime >= 60 ms with RepetitionTime >= 1500 ms T2; TE <= 30 ms with TR <= 1000 ms
  T1; TE <= 30 ms with TR >= 1500 ms PD.
* among several sagittal T2 candidates: T2 named before STIR named before weighting from the timings
  (SPINEPS's model is a T2w model, and STIR's fat suppression changes the image it sees), ORIGINAL
  before DERIVED images, the most images, the highest SeriesNumber, the highest SeriesInstanceUID.
"""
from __future__ import annotations

import json
import os
import re
import stat
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .dataset import DatasetError, Inventory, pick_studies
from .dicom import sniff
from .dicom import plane_of
from .files import write_atomic
from .inputs import INVENTORY_DIR, listing_path, write_listing
from .ledger import StudyRow

CACHE_NAME = "dicom_headers.json"
CACHE_VERSION = 2
HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription",
    "ProtocolName", "SeriesNumber", "ImageType", "Rows", "Columns", "ImageOrientationPatient", "NumberOfFrames",
    "EchoTime", "RepetitionTime", "InversionTime", "AcquisitionContrast",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
]
# Weighting words, matched against the lower-cased words of SeriesDescription and ProtocolName.
_NOT_T2 = (("T1", re.compile(r"t1(?!\d)\w*")), ("FLAIR", re.compile(r"\w*flair\w*")),
           ("T2*", re.compile(r"t2\*|t2star\w*|t2s")), ("PD", re.compile(r"pd(w|fs|tse|fse)?")),
           ("DWI", re.compile(r"dwi|diff\w*|adc|dti|trace|ep2d\w*")))
_STIR = re.compile(r"stir\w*|tirm\w*")
_T2 = re.compile(r"t2(?![\d*])\w*")
_TSE = re.compile(r"(tse|fse|frfse|ssfse|haste|space|cube|vista)\w*")
_LOCALIZER = re.compile(r"loc(ali[sz]er|ator)?|scout|survey|3[ _-]?pl(ane)?|tri[ _-]?pilot|aa(head_)?scout")
_CONTRAST = {"T2": "T2", "T1": "T1", "PROTON_DENSITY": "PD", "FLAIR": "FLAIR", "DIFFUSION": "DWI"}
T2_LIKE = ("T2", "STIR")


# ---------------------------------------------------------------- reading the tree


class HeaderCache:
    """Header facts by absolute path, reused while a file's size and mtime are what they were.

    Saved with only the files looked up this time: a changed file is read again, a vanished one dropped,
    each entry on its own.
    """

    def __init__(self, file: Path | None) -> None:
        self.file = Path(file) if file is not None else None
        self.old = _load_cache(self.file)
        self.now: dict[str, list] = {}
        self.read = 0
        self.cached = 0

    def header(self, path: Path, size: int, mtime_ns: int) -> dict[str, Any]:
        key = str(path)
        hit = self.old.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == size and hit[1] == mtime_ns:
            self.cached += 1
            header = hit[2]
        else:
            self.read += 1
            header = read_header(path)
        self.now[key] = [size, mtime_ns, header]
        return header

    def save(self) -> None:
        if self.file is not None and (self.read or self.now.keys() != self.old.keys()):
            write_atomic(self.file, json.dumps({"version": CACHE_VERSION, "files": self.now}, separators=(",", ":")))


@dataclass
class TreeScan:
    """Every file under the root with its header facts (`read_header`'s dicts)."""

    root: Path
    files: dict[str, dict[str, Any]]          # path relative to root ('/'-separated) -> header facts
    dicomdir: int = 0                         # DICOMDIR files ignored

    def images(self) -> dict[str, dict[str, Any]]:
        return {rel: h for rel, h in self.files.items() if h["kind"] == "image"}


def scan_tree(root: Path, cache: HeaderCache, *, exclude: Path | None = None,
              progress: Callable[[int, int], None] | None = None) -> TreeScan:
    """The header facts of every file under `root` (any depth), through the cache."""
    root = Path(root)
    scan = TreeScan(root, {})
    entries: list[tuple[Path, int, int]] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if exclude is None or (here / d).resolve() != exclude)
        for name in sorted(names):
            if name.upper() == "DICOMDIR":
                scan.dicomdir += 1
                continue
            path = here / name
            try:
                st = path.stat()
            except OSError:
                continue                                  # a dangling link, or a file deleted meanwhile
            if stat.S_ISREG(st.st_mode):
                entries.append((path, st.st_size, st.st_mtime_ns))
    for n, (path, size, mtime) in enumerate(entries, start=1):
        scan.files[path.relative_to(root).as_posix()] = cache.header(path, size, mtime)
        if progress is not None and (n % 200 == 0 or n == len(entries)):
            progress(n, len(entries))
    return scan


def read_header(path: Path) -> dict[str, Any]:
    """The facts of one file that choosing a series needs; {"kind": "other"|"unreadable", "why": ...} otherwise."""
    try:
        with open(path, "rb") as handle:
            kind = sniff(handle.read(132))
    except OSError as exc:
        return {"kind": "unreadable", "why": f"cannot be opened ({exc.strerror or exc})"}
    if kind == "other":
        return {"kind": "other", "why": "not DICOM"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS, force=kind != "dicom")
        facts = _facts(ds)
    except Exception as exc:  # noqa: BLE001 - pydicom meets garbage with any exception type
        if kind == "dicom":
            return {"kind": "unreadable", "why": f"{type(exc).__name__}: {exc}"[:200]}
        return {"kind": "other", "why": "not DICOM"}
    if not (facts.get("study") and facts.get("series") and facts.get("rows") and facts.get("iop")):
        sop = ds.get("SOPClassUID") or ds.get("file_meta", Dataset()).get("MediaStorageSOPClassUID")
        if kind == "dicom" and not sop:
            # The preamble promised DICOM, yet nothing says what the file is: a damaged file, not a stray one.
            return {"kind": "unreadable", "why": "DICOM preamble but no recognisable content"}
        what = getattr(sop, "name", None) or str(sop or "not DICOM")
        return {"kind": "other", "why": f"not an image with a position ({what})"}
    return facts


def _facts(ds: pydicom.Dataset) -> dict[str, Any]:
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    frame = _first(ds, "PerFrameFunctionalGroupsSequence")
    # Enhanced multi-frame: what a classic file holds at the top sits in the functional groups.
    iop = _number_list(ds.get("ImageOrientationPatient"))
    if iop is None:   # the orientation: shared groups first
        iop = _in_groups((shared, frame), "PlaneOrientationSequence", "ImageOrientationPatient", _number_list)
    te = _number(ds.get("EchoTime"))
    if te is None:
        te = _in_groups((frame, shared), "MREchoSequence", "EffectiveEchoTime", _number)
    tr = _number(ds.get("RepetitionTime"))
    if tr is None:
        tr = _in_groups((shared,), "MRTimingAndRelatedParametersSequence", "RepetitionTime", _number)
    ti = _number(ds.get("InversionTime"))
    if ti is None:
        ti = _in_groups((frame, shared), "MRModifierSequence", "InversionTimes", _first_number)
    image_type = ds.get("ImageType")
    facts = {
        "kind": "image",
        "study": _text(ds.get("StudyInstanceUID")),
        "series": _text(ds.get("SeriesInstanceUID")),
        "sop": _text(ds.get("SOPInstanceUID")),
        "modality": _text(ds.get("Modality")),
        "description": _text(ds.get("SeriesDescription")),
        "protocol": _text(ds.get("ProtocolName")),
        "number": _int(ds.get("SeriesNumber")),
        "image_type": [str(v) for v in image_type] if isinstance(image_type, (list, MultiValue))
        else ([str(image_type)] if image_type else []),
        "rows": _int(ds.get("Rows")),
        "iop": iop if iop is not None and len(iop) == 6 else None,
        "plane": _plane(iop) if iop is not None and len(iop) == 6 else "unknown",
        "frames": _int(ds.get("NumberOfFrames")) or 1,
        "te": te, "tr": tr, "ti": ti,
        "contrast": _text(ds.get("AcquisitionContrast")),
    }
    return facts


def _in_groups(groups: tuple[Any, ...], sequence: str, keyword: str, read: Callable[[Any], Any]) -> Any:
    """`keyword` of the first functional group (in the order given) whose `sequence` holds a readable one."""
    for group in groups:
        value = read(_first(group, sequence).get(keyword))
        if value is not None:
            return value
    return None


def _first_number(value: Any) -> float | None:
    numbers = _number_list(value, n=None)
    return numbers[0] if numbers else None


def _first(ds: Any, keyword: str) -> Any:
    try:
        seq = ds.get(keyword) if ds is not None else None
        return seq[0] if seq else Dataset()
    except Exception:  # noqa: BLE001 - a garbled sequence reads as absent
        return Dataset()


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _number(value: Any) -> float | None:
    try:
        v = float(value[0] if isinstance(value, (list, MultiValue)) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return v if np.isfinite(v) else None


def _int(value: Any) -> int | None:
    v = _number(value)
    return int(v) if v is not None else None


def _number_list(value: Any, n: int | None = 6) -> list[float] | None:
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if (n is not None and len(values) != n) or not all(np.isfinite(values)):
        return None
    return values


def _load_cache(cache_file: Path | None) -> dict[str, list]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(Path(cache_file).read_text(encoding="utf-8"))
        return data["files"] if data.get("version") == CACHE_VERSION and isinstance(data["files"], dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}       # no cache, or an unreadable one: every header is read again


# ---------------------------------------------------------------- series and the rule


@dataclass
class SeriesFacts:
    """One series of a study, summed over its files."""

    study: str
    series: str
    files: list[str]                                # relative paths, sorted
    first: dict[str, Any]                           # the header facts of the file with the lowest SOPInstanceUID
    planes: Counter = field(default_factory=Counter)  # plane -> images (frames) in it

    @property
    def images(self) -> int:
        return sum(self.planes.values())

    @property
    def plane(self) -> str:
        plane, count = self.planes.most_common(1)[0]
        return plane if 2 * count > self.images else "mixed"

    @property
    def name(self) -> str:
        number = self.first.get("number")
        text = self.first.get("description") or self.first.get("protocol") or ""
        return f"#{number if number is not None else '?'} {text!r}"

    @property
    def localizer(self) -> bool:
        image_type = [v.upper() for v in self.first.get("image_type", [])]
        words = f"{self.first.get('description', '')} {self.first.get('protocol', '')}".lower()
        return "LOCALIZER" in image_type or bool(_LOCALIZER.search(words))

    @property
    def derived(self) -> bool:
        image_type = self.first.get("image_type", [])
        return bool(image_type) and str(image_type[0]).upper() == "DERIVED"


def group_series(images: dict[str, dict[str, Any]]) -> dict[str, list[SeriesFacts]]:
    """StudyInstanceUID -> its series (by SeriesInstanceUID); folders play no part."""
    grouped: dict[tuple[str, str], list[tuple[str, dict]]] = defaultdict(list)
    for rel, header in images.items():
        grouped[(header["study"], header["series"])].append((rel, header))
    studies: dict[str, list[SeriesFacts]] = defaultdict(list)
    for (study, series), members in sorted(grouped.items()):
        members.sort(key=lambda m: (m[1].get("sop") or "", m[0]))
        facts = SeriesFacts(study, series, sorted(rel for rel, _ in members), members[0][1])
        for _, header in members:
            facts.planes[header["plane"]] += int(header.get("frames") or 1)
        studies[study].append(facts)
    return studies


def _plane(iop: list[float]) -> str:
    """The plane of the slice normal, computed once when the header is read (and cached with it)."""
    (a, b, c), (d, e, f) = iop[:3], iop[3:]
    normal = (b * f - c * e, c * d - a * f, a * e - b * d)
    return plane_of(np.asarray(normal)) if max(abs(v) for v in normal) > 1e-6 else "unknown"


def weighting(series: SeriesFacts) -> tuple[str, str, int]:
    """(weighting, how it was told, tier): tier 0 T2 named, 1 STIR named, 2 from the timings, 3 not T2-like."""
    h = series.first
    words = [(tag, w) for tag in ("description", "protocol")
             for w in re.split(r"[^a-z0-9*]+", (h.get(tag) or "").lower()) if w]
    tag_name = {"description": "SeriesDescription", "protocol": "ProtocolName"}

    def said(tag: str, word: str) -> str:
        return f"keyword {word!r} in {tag_name[tag]} {h.get(tag)!r}"

    for weight, pattern in _NOT_T2:
        for tag, word in words:
            if pattern.fullmatch(word):
                return weight, said(tag, word), 3
    for weight, pattern, tier in (("STIR", _STIR, 1), ("T2", _T2, 0)):
        for tag, word in words:
            if pattern.fullmatch(word):
                return weight, said(tag, word), tier
    contrast = _CONTRAST.get((h.get("contrast") or "").upper())
    if contrast:
        return contrast, f"AcquisitionContrast {h.get('contrast')}", 0 if contrast == "T2" else 3
    weak = next(((tag, word) for tag, word in words if _TSE.fullmatch(word)), None)
    weight, how = _from_timings(h)
    if weak is not None:
        if weight == "unknown":
            return "T2", f"{said(*weak)} (a turbo spin echo, weighting not named; no timings)", 2
        how = f"{said(*weak)} and {how}"
    return weight, how, 2 if weight in T2_LIKE else 3


def _from_timings(h: dict[str, Any]) -> tuple[str, str]:
    te, tr, ti = h.get("te"), h.get("tr"), h.get("ti")
    if ti is not None and ti > 0:
        weight = "STIR" if 100 <= ti <= 300 else "FLAIR" if ti >= 1500 else "T1"
        return weight, f"InversionTime {ti:g} ms"
    if te is None or tr is None:
        return "unknown", "no weighting keyword, no EchoTime/RepetitionTime"
    how = f"EchoTime {te:g} ms, RepetitionTime {tr:g} ms"
    if te >= 60 and tr >= 1500:
        return "T2", how
    if te <= 30 and tr <= 1000:
        return "T1", how
    if te <= 30 and tr >= 1500:
        return "PD", how
    return "unknown", how + " fit no weighting"


def describe(series: SeriesFacts) -> str:
    """`#3 'T2_TSE_SAG' (sagittal T2 by keyword 't2' in SeriesDescription ..., 17 images)`."""
    if series.localizer:
        return f"{series.name} (localizer, {series.images} images)"
    if series.first.get("modality") not in ("MR", ""):
        return f"{series.name} ({series.first.get('modality')}, {series.images} images)"
    weight, how, _ = weighting(series)
    return f"{series.name} ({series.plane} {weight}: {how}; {series.images} images)"


def candidates(series: list[SeriesFacts]) -> list[tuple[int, SeriesFacts]]:
    """(tier, series) of every sagittal T2-like series that could be chosen."""
    out = []
    for s in series:
        weight, _, tier = weighting(s)
        if (s.plane == "sagittal" and weight in T2_LIKE and not s.localizer and s.images >= 2
                and s.first.get("modality") in ("MR", "")):
            out.append((tier, s))
    return out


def choose_series(study: str, series: list[SeriesFacts]) -> tuple[SeriesFacts | None, str]:
    """The study's sagittal T2-weighted series and why; None and what it had when there is none."""
    pool = candidates(series)
    found = "; ".join(describe(s) for s in series)
    if not pool:
        return None, f"study {study}: no sagittal T2 series among {len(series)}: {found}"
    _, best = max(pool, key=lambda c: (-c[0], not c[1].derived, c[1].images, c[1].first.get("number") or 0,
                                                 c[1].series))
    if len(pool) == 1:
        return best, f"{describe(best)}; the only sagittal T2 series of {len(series)}"
    listing = "; ".join(describe(s) for _, s in pool)
    return best, (f"{len(pool)} sagittal T2 series: {listing}; chose {best.name}: T2 named before STIR "
                  "before timings, original before derived, then most images, highest series number")


# ---------------------------------------------------------------- the inventory


def cache_path(project_dir: Path) -> Path:
    return Path(project_dir) / INVENTORY_DIR / CACHE_NAME


def build_inventory(dataset: Path, project_dir: Path, *, study_list: list[str] | None = None,
                    limit: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> Inventory:
    dataset = Path(dataset).resolve()
    project_dir = Path(project_dir).resolve()
    if not dataset.is_dir():
        raise DatasetError("dataset.layout", f"{dataset}: no such folder")
    cache = HeaderCache(cache_path(project_dir))
    scan = scan_tree(dataset, cache, exclude=project_dir, progress=progress)
    cache.save()
    studies = group_series(scan.images())
    unreadable = sorted((rel, h["why"]) for rel, h in scan.files.items() if h["kind"] == "unreadable")
    if not studies:
        raise DatasetError("dataset.layout", f"{dataset}: no DICOM images with a StudyInstanceUID, SeriesInstanceUID "
                                             f"and a position among {len(scan.files)} files")

    def row(study: str, series: list[SeriesFacts]) -> StudyRow:
        chosen, reason = choose_series(study, series)
        if chosen is None:
            return StudyRow(study_id=study, skip_class="input.no_series", skip_message=reason)
        # Every candidate's listing is kept current: a ledger row keeps the series an earlier init chose.
        for _, candidate in candidates(series):
            write_listing(project_dir, study, candidate.series, dataset, candidate.files)
        listing = listing_path(project_dir, study, chosen.series)
        return StudyRow(study_id=study, series_id=chosen.series,
                        series_description=chosen.first.get("description") or chosen.first.get("protocol") or None,
                        input_path=str(listing), selection_reason=reason)

    rows = pick_studies(studies, study_list, limit, source=f"the DICOM tree {dataset}", make_row=row,
                        id_rule="not a StudyInstanceUID that can become a file name")
    other = len(scan.files) - len(scan.images()) - len(unreadable)
    notes = [f"{len(scan.files)} files: {cache.read} headers read, {cache.cached} from the cache ({cache.file}); "
             f"{len(scan.images())} images in {sum(len(v) for v in studies.values())} series of {len(studies)} "
             f"studies, {other} other files ignored" + (f", {scan.dicomdir} DICOMDIR ignored" if scan.dicomdir else "")]
    warnings_ = []
    if unreadable:
        shown = "; ".join(f"{rel}: {why}" for rel, why in unreadable[:5])
        warnings_.append(f"{len(unreadable)} file(s) have a DICOM preamble but cannot be read, so they belong to no "
                         f"series: {shown}" + (" ..." if len(unreadable) > 5 else ""))
    return Inventory(rows=rows, layout="dicom", source=dataset, wanted="a sagittal T2 series", warnings=warnings_,
                     notes=notes)
