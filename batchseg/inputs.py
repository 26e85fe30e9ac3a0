"""A study's input at run time: where it is (from the config and the ledger row) and how it becomes the NIfTI.

Three kinds of source, whatever the dataset layout:

* `dicom_folder`: a folder holding the series (RSNA, a manifest row naming a folder): converted.
* `dicom_files`: a series listing written by `init` (`<project>/inventory/series/<study>/<hash>.json`, one per
  study and SeriesInstanceUID) naming the series' files, which may be spread over any folders (a PACS export,
  a manifest folder holding several series), converted as one series (`dicom.convert_series(files=...)`).
  The listing is found from the ledger row's series id, so a worker converts the series its row names even
  when a later `init` would choose another.
* `nifti`: a NIfTI file (BIDS, a manifest row naming one): checked, then copied or linked (nifti_input.py).

Paths come from the project's config where they can, so a dataset moved or mounted elsewhere is found
again by editing `dataset` in batchseg.toml; ids are checked again before they become a path.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import Config
from .dataset import is_rsna_id, is_valid_id, printable_id, series_folder
from .errors import StudyError
from .nifti_input import is_nifti_name

INVENTORY_DIR = "inventory"
SOURCE_KINDS = ("dicom_folder", "dicom_files", "nifti")


@dataclass(frozen=True)
class StudySource:
    kind: str                     # one of SOURCE_KINDS
    path: Path                    # the series folder, the series listing, or the NIfTI file
    root: Path | None = None      # dicom_files: what the listing's paths are relative to (else the listing's own root)

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "path": str(self.path)}


class Report(Protocol):
    """What making the NIfTI reports (dicom.ConversionReport, nifti_input.NiftiReport)."""

    series_uid: str

    def to_dict(self) -> dict: ...


class StudyRef(Protocol):
    """What locating needs of a claimed study (ledger.Claim has it)."""

    study_id: str
    series_id: str | None
    input_path: str | None


def listing_path(project_dir: Path, study_id: str, series_uid: str) -> Path:
    """Where `init` lists the files of one series of a study (named by a hash: a UID may hold anything)."""
    name = hashlib.sha256(series_uid.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return Path(project_dir) / INVENTORY_DIR / "series" / study_id / f"{name}.json"


def write_listing(project_dir: Path, study_id: str, series_uid: str, root: Path, files: list[str]) -> Path:
    """Write (or leave as it is, when unchanged) the listing of one series' files, relative to `root`."""
    from .files import write_json

    path = listing_path(project_dir, study_id, series_uid)
    listing = {"study_id": study_id, "series_instance_uid": series_uid, "root": str(root), "files": sorted(files)}
    try:
        if json.loads(path.read_text(encoding="utf-8")) == listing:
            return path
    except (OSError, ValueError):
        pass
    return write_json(path, listing)


def locate(config: Config, study: StudyRef) -> StudySource:
    """The source of a claimed study in the project's layout; StudyError input.bad_id for a crafted row."""
    sid = study.study_id
    _check_id(sid, sid, rsna=config.layout == "rsna")
    series = study.series_id
    if config.layout == "rsna":
        if config.dataset_dir is not None and series:
            _check_id(sid, series, rsna=True)
            return StudySource("dicom_folder", series_folder(config.dataset_dir, config.split, sid, series))
        return StudySource("dicom_folder", Path(study.input_path or ""))
    if config.layout == "bids":
        if config.dataset_dir is None or not series:
            return StudySource("nifti", Path(study.input_path or ""))
        _check_id(sid, series)
        from .bids import study_folder

        return StudySource("nifti", study_folder(config.dataset_dir, sid) / series)
    if config.layout == "dicom":
        return StudySource("dicom_files", listing_path(config.project_dir, sid, series or ""), root=config.dataset_dir)
    # manifest: the paths were resolved at init (they may be anywhere).
    if series:
        return StudySource("dicom_files", listing_path(config.project_dir, sid, series))
    path = Path(study.input_path or "")
    return StudySource("nifti" if is_nifti_name(path) else "dicom_folder", path)


def prepare(source: StudySource, out_nifti: Path, *, study: str, series: str | None = None,
            link: bool = False) -> Report:
    """Make `out_nifti` (the study's staged NIfTI) from its source; raises StudyError."""
    from .dicom import convert_series
    from .nifti_input import place_nifti

    if source.kind == "nifti":
        return place_nifti(source.path, out_nifti, link=link, study=study)
    if source.kind == "dicom_files":
        root, files = _listed_files(source, study, series)
        return convert_series(root, out_nifti, require_plane="sagittal", study=study, series_uid=series, files=files)
    if not source.path.is_dir():
        raise StudyError("input.missing", f"study {study}: series folder {source.path} does not exist")
    return convert_series(source.path, out_nifti, require_plane="sagittal", study=study)


def _listed_files(source: StudySource, study: str, series: str | None) -> tuple[Path, list[Path]]:
    """(root, the series' files) from a listing, every file checked to be there and inside the root."""
    try:
        listing: dict[str, Any] = json.loads(source.path.read_text(encoding="utf-8"))
        files = [str(f) for f in listing["files"]]
        root = source.root or Path(listing["root"])
        listed_series = listing["series_instance_uid"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StudyError("input.missing", f"study {study}: the series listing {source.path} cannot be read "
                                          f"({type(exc).__name__}: {exc}); run `batchseg init` again") from exc
    if series is not None and listed_series != series:
        raise StudyError("input.missing", f"study {study}: the series listing {source.path} is of series "
                                          f"{listed_series}, not {series}; run `batchseg init` again")
    outside = [f for f in files if Path(f).is_absolute() or ".." in Path(f).parts]
    if outside:
        raise StudyError("input.bad_id", f"study {study}: the series listing {source.path} names a file outside "
                                         f"{root} ({printable_id(outside[0])}); run `batchseg init` again")
    gone = [f for f in files if not (root / f).is_file()]
    if gone:
        raise StudyError("input.missing", f"study {study}: {len(gone)} of {len(files)} files of the series are gone "
                                          f"from {root} (first: {gone[0]}); run `batchseg init` again if the "
                                          "files moved")
    return root, [root / f for f in files]


def _check_id(study: str, value: str, *, rsna: bool = False) -> None:
    ok = is_rsna_id(value) if rsna else is_valid_id(value)
    if not ok:
        raise StudyError("input.bad_id", f"study {printable_id(study)!r}: id {printable_id(value)!r} from the ledger "
                                         "cannot become a path")
