"""BIDS datasets: `sub-<label>[/ses-<label>]/anat/*_T2w.nii[.gz]`, one study per subject and session.

Study id `sub-<label>` or `sub-<label>_ses-<label>` (BIDS labels are alphanumeric; docs/architecture.md,
"Domain facts"). Candidates are the T2w images of the study's `anat/` folder whose file name carries the same subject (and session)
entities, with any other entities (`acq-sag`, `run-2`, ...). Chosen: a sagittal one (slice axis by
nifti_input's rule, read from the header alone) with the most slices, then the last name in sort
order (a later run); the reason names every candidate.
"""
from __future__ import annotations

import re
from pathlib import Path

from .dataset import DatasetError, Inventory, is_valid_id, pick_studies
from .errors import StudyError
from .ledger import StudyRow
from .nifti_input import NiftiFacts, header_facts

T2W_NAME = re.compile(r"(sub-[^_/]+)(_ses-[^_/]+)?((?:_[A-Za-z]+-[^_/]+)*)_T2w\.nii(\.gz)?")
BIDS_ID = re.compile(r"sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?")
DESCRIPTION = "T2w"


def is_bids_id(value: str) -> bool:
    """`sub-<label>[_ses-<label>]` with alphanumeric labels, within the general id rule."""
    return bool(BIDS_ID.fullmatch(value)) and is_valid_id(value)


def study_folder(dataset: Path, study_id: str) -> Path:
    """`sub-X/anat` or `sub-X/ses-Y/anat` of a study id (validated before it gets here)."""
    subject, _, session = study_id.partition("_ses-")
    folder = Path(dataset) / subject
    return (folder / f"ses-{session}" if session else folder) / "anat"


def find_studies(dataset: Path) -> dict[str, list[Path]]:
    """study id -> its `anat/` files (every file, so a study without a T2w can say what it had)."""
    found: dict[str, list[Path]] = {}
    for subject in sorted(p for p in dataset.glob("sub-*") if p.is_dir()):
        sessions = sorted(p for p in subject.glob("ses-*") if p.is_dir())
        places = [(f"{subject.name}_{s.name}", s / "anat") for s in sessions]
        if (subject / "anat").is_dir() or not sessions:
            places.append((subject.name, subject / "anat"))
        for study, anat in places:
            found[study] = sorted(p for p in anat.iterdir() if p.is_file()) if anat.is_dir() else []
    return found


def candidates(study: str, files: list[Path]) -> list[Path]:
    """The T2w images of a study: name pattern, and the subject/session entities of the folder."""
    out = []
    for path in files:
        match = T2W_NAME.fullmatch(path.name)
        if match and f"{match.group(1)}{match.group(2) or ''}" == study:
            out.append(path)
    return out


def choose(study: str, files: list[Path]) -> tuple[Path | None, str, str]:
    """(chosen image, reason, skip class when none): the sagittal T2w with the most slices."""
    found = candidates(study, files)
    if not found:
        names = ", ".join(p.name for p in files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else "")
        return None, f"study {study}: no *_T2w.nii[.gz] image in anat/ (found: {names or 'nothing'})", "input.no_series"
    facts: list[tuple[Path, NiftiFacts | None, str]] = []
    for path in found:
        try:
            facts.append((path, header_facts(path), ""))
        except StudyError as exc:
            facts.append((path, None, exc.message))
    listing = ", ".join(f"{p.name} ({f.describe() if f else why})" for p, f, why in facts)
    usable = [(p, f) for p, f, _ in facts if f is not None and f.plane == "sagittal" and f.n_slices >= 2]
    if not usable:
        unreadable = [why for _, f, why in facts if f is None]
        if len(unreadable) == len(facts):
            return None, f"study {study}: no readable T2w image: {'; '.join(unreadable)}", "input.bad_nifti"
        return None, f"study {study}: no sagittal T2w image (found: {listing})", "input.no_series"
    best, best_facts = max(usable, key=lambda pf: (pf[1].n_slices, pf[0].name))
    if len(found) == 1:
        return best, f"the only T2w image ({best_facts.describe()})", ""
    return best, (f"{len(found)} T2w images: {listing}; chose {best.name}, sagittal with the most slices "
                  "then the last name"), ""


def build_inventory(dataset: Path, *, study_list: list[str] | None = None, limit: int | None = None) -> Inventory:
    dataset = Path(dataset).resolve()
    if not dataset.is_dir():
        raise DatasetError("dataset.layout", f"{dataset}: no such folder")
    found = find_studies(dataset)
    if not found:
        raise DatasetError("dataset.layout", f"{dataset}: no sub-* folders; not a BIDS dataset")

    def row(study: str, files: list[Path]) -> StudyRow:
        chosen, reason, skip = choose(study, files)
        if chosen is None:
            return StudyRow(study_id=study, skip_class=skip, skip_message=reason)
        return StudyRow(study_id=study, series_id=chosen.name, series_description=DESCRIPTION,
                        input_path=str(chosen), selection_reason=reason)

    rows = pick_studies(found, study_list, limit, source=f"{dataset} (no sub-/ses- folder of that name)", make_row=row,
                        id_rule="not a BIDS study id of alphanumeric labels (sub-<label>[_ses-<label>])",
                        id_ok=is_bids_id)
    return Inventory(rows=rows, layout="bids", source=dataset, wanted="a sagittal T2w image")
