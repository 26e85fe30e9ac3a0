"""The synthetic phantoms of synth.py in the other dataset layouts: BIDS, a manifest, a PACS-style DICOM tree.

Each layout is written from an RSNA-layout synthetic dataset, so the same seed gives the same
phantoms, voxel for voxel, in every layout (the acceptance test of the layouts compares their
outputs with the RSNA form's):

* `bids`: `sub-<id>[/ses-1]/anat/sub-<id>[_ses-1]_T2w.nii.gz` (every second study has a session) and
  a `_T1w` image beside it; the NIfTI files are batchseg's own conversion of the RSNA series.
* `manifest`: `manifest.csv` (study ids `case-<id>`) naming, in turn, a converted NIfTI file, a folder
  holding the T2 series alone, and a folder holding every series of the study (with `series_id`).
* `dicom`: `DICOM/<patient>/<study>/<A|B|C>[/deep]/IM<n>`: extension-less files, the series of a study
  mixed over nested folders, a 3-image localizer as a fourth series, realistic SeriesDescription /
  ProtocolName / EchoTime / RepetitionTime (every fourth study has no descriptions, so the timings
  decide), dotted StudyInstanceUIDs (the study ids), a DICOMDIR and non-DICOM files to be ignored.

Broken studies keep their kind: no_t2 (no T2 image or series), truncated (a T2 file cut in half),
missing_folder (listed in study_ids.txt, absent from the dataset or pointing nowhere).
`ground_truth/` holds the label maps renamed to the layout's study ids, and `manifest.json` maps each
id to its RSNA id (`rsna_study_id`).
"""
from __future__ import annotations

import csv
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pydicom
from pydicom.uid import PYDICOM_ROOT_UID

from .files import write_json
from .synth import AX_T2, SAG_T1, SAG_T2, _dataset, read_manifest, synth_dataset

LAYOUT_NAMES = ("rsna", "bids", "manifest", "dicom")
# What a scanner would call each series, and its timings (ms): what the DICOM tree inventory reads.
_SCANNER = {SAG_T1: ("t1_tse_sag", 12.0, 650.0), SAG_T2: ("t2_tse_sag", 105.0, 3800.0),
            AX_T2: ("t2_tse_tra", 98.0, 4200.0)}
LOCALIZER = ("localizer", 4.0, 8.6)


@dataclass
class LayoutDataset:
    """A synthetic dataset in one layout: what `init --dataset` and `--studies` take."""

    layout: str
    root: Path                 # the dataset folder
    dataset: Path              # what --dataset names: the manifest CSV for `manifest`, else the root
    study_list: Path
    ids: dict[str, str]        # RSNA study id -> this layout's study id


def synth_layout(root: Path, layout: str, n_studies: int = 8, seed: int = 0, *, matrix: int = 256,
                 broken: bool = True, variants: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None) -> LayoutDataset:
    """`synth_dataset`'s phantoms written in `layout` under `root`."""
    if layout not in LAYOUT_NAMES:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_NAMES)}")
    root = Path(root)
    if layout == "rsna":
        made = synth_dataset(root, n_studies, seed, matrix=matrix, broken=broken, variants=variants,
                             progress=progress)
        ids = {str(s.study_id): str(s.study_id) for s in made.studies}
        return LayoutDataset("rsna", root, root, made.study_list, ids)
    _check_empty(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}-rsna-", dir=root.parent) as tmp:
        synth_dataset(Path(tmp) / "rsna", n_studies, seed, matrix=matrix, broken=broken, variants=variants,
                      progress=progress)
        return write_layout(Path(tmp) / "rsna", root, layout)


def write_layout(rsna_root: Path, dest: Path, layout: str) -> LayoutDataset:
    """Write the studies of the RSNA-layout synthetic dataset `rsna_root` in `layout` under `dest`."""
    writers = {"bids": _write_bids, "manifest": _write_manifest, "dicom": _write_dicom_tree}
    if layout not in writers:
        raise ValueError(f"write_layout writes {', '.join(writers)}, not {layout!r}")
    rsna_root, dest = Path(rsna_root), Path(dest)
    _check_empty(dest)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(rsna_root)
    studies = list(manifest["studies"].items())
    ids = writers[layout](rsna_root, dest, studies)
    (dest / "ground_truth").mkdir(exist_ok=True)
    renamed = {}
    for sid, info in studies:
        entry = {**info, "rsna_study_id": sid}
        if info["ground_truth"]:
            name = f"{ids[sid]}_seg-vert_msk.nii.gz"
            shutil.copyfile(rsna_root / info["ground_truth"], dest / "ground_truth" / name)
            entry["ground_truth"] = f"ground_truth/{name}"
        renamed[ids[sid]] = entry
    write_json(dest / "ground_truth" / "manifest.json", {**manifest, "layout": layout, "studies": renamed})
    study_list = dest / "study_ids.txt"
    study_list.write_text("".join(f"{ids[sid]}\n" for sid, _ in studies))
    dataset = dest / "manifest.csv" if layout == "manifest" else dest
    return LayoutDataset(layout, dest, dataset, study_list, ids)


def _check_empty(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; synthesize into an empty folder")


def _series_dir(rsna_root: Path, sid: str, info: dict, description: str) -> Path | None:
    series = info["series"].get(description)
    folder = rsna_root / "train_images" / sid / str(series) if series else None
    return folder if folder is not None and folder.is_dir() else None


def _convert(series_dir: Path, out: Path) -> None:
    from .dicom import convert_series

    convert_series(series_dir, out, require_plane="sagittal")


# ---------------------------------------------------------------- BIDS


def _write_bids(rsna_root: Path, dest: Path, studies: list[tuple[str, dict]]) -> dict[str, str]:
    write_json(dest / "dataset_description.json",
               {"Name": "batchseg synthetic phantom spines", "BIDSVersion": "1.9.0", "DatasetType": "raw"})
    # Not BIDS: what the synthetic data adds for its tests. A validator skips what .bidsignore names.
    (dest / ".bidsignore").write_text("ground_truth/\nstudy_ids.txt\n")
    ids: dict[str, str] = {}
    participants = ["participant_id"]
    for n, (sid, info) in enumerate(studies):
        subject, session = f"sub-{sid}", ("ses-1" if n % 2 else "")
        ids[sid] = f"{subject}_{session}" if session else subject
        if info["broken"] == "missing_folder":
            continue
        participants.append(subject)
        anat = dest / subject / session / "anat" if session else dest / subject / "anat"
        anat.mkdir(parents=True)
        t1 = _series_dir(rsna_root, sid, info, SAG_T1)
        if t1 is not None:
            _convert(t1, anat / f"{ids[sid]}_T1w.nii.gz")
        t2 = _series_dir(rsna_root, sid, info, SAG_T2)
        if t2 is None:
            continue
        if info["broken"] == "truncated":
            # The RSNA series lacks half a slice; here the NIfTI file lacks its second half.
            whole = (anat / f"{ids[sid]}_T1w.nii.gz").read_bytes()
            (anat / f"{ids[sid]}_T2w.nii.gz").write_bytes(whole[: len(whole) // 2])
        else:
            _convert(t2, anat / f"{ids[sid]}_T2w.nii.gz")
    (dest / "participants.tsv").write_text("\n".join(participants) + "\n")
    return ids


# ---------------------------------------------------------------- manifest


def _write_manifest(rsna_root: Path, dest: Path, studies: list[tuple[str, dict]]) -> dict[str, str]:
    ids: dict[str, str] = {}
    rows: list[list[str]] = []
    images = dest / "images"
    images.mkdir()
    for n, (sid, info) in enumerate(studies):
        study = ids[sid] = f"case-{sid}"
        t2 = _series_dir(rsna_root, sid, info, SAG_T2)
        form = n % 3 if info["broken"] is None else 1
        if info["broken"] == "no_t2":
            continue                                    # not in the manifest at all
        if form == 0:
            _convert(t2, images / f"{study}_T2w.nii.gz")
            rows.append([study, f"images/{study}_T2w.nii.gz", ""])
        elif form == 1:
            if t2 is not None:                          # missing_folder: the row points nowhere
                shutil.copytree(t2, images / study)
            rows.append([study, f"images/{study}", ""])
        else:
            # Every series of the study in one folder; series_id says which one to take.
            for description in (SAG_T1, SAG_T2, AX_T2):
                folder = _series_dir(rsna_root, sid, info, description)
                for path in sorted(folder.iterdir()):
                    (images / study).mkdir(exist_ok=True)
                    shutil.copyfile(path, images / study / f"{folder.name}_{path.name}")
            rows.append([study, f"images/{study}", str(info["series"][SAG_T2])])
    with open(dest / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_id", "path", "series_id"])
        writer.writerows(rows)
    return ids


# ---------------------------------------------------------------- a PACS-style DICOM tree


def _write_dicom_tree(rsna_root: Path, dest: Path, studies: list[tuple[str, dict]]) -> dict[str, str]:
    tree = dest / "DICOM"
    tree.mkdir()
    # What a PACS export carries besides images: an index and the odd stray file.
    _write_dicomdir(dest / "DICOMDIR")
    (tree / "README.TXT").write_text("Exported images. Not for diagnostic use.\n")
    (tree / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    ids: dict[str, str] = {}
    for n, (sid, info) in enumerate(studies):
        ids[sid] = f"{PYDICOM_ROOT_UID}{sid}"
        if info["broken"] == "missing_folder":
            continue
        rng = np.random.default_rng(int(sid))
        silent = n % 4 == 1                          # no descriptions: the timings must decide
        datasets: list[tuple[pydicom.Dataset, bool]] = []
        for description in (SAG_T1, SAG_T2, AX_T2):
            folder = _series_dir(rsna_root, sid, info, description)
            if folder is None:
                continue
            name, te, tr = _SCANNER[description]
            for path in sorted(folder.iterdir()):
                ds, cut = _read_for_rewrite(path)
                _describe(ds, ids[sid], name if not silent else "", te, tr, ["ORIGINAL", "PRIMARY", "M", "ND"])
                datasets.append((ds, cut))
        datasets += [(ds, False) for ds in _localizer(int(sid), ids[sid], rng)]
        order = rng.permutation(len(datasets))
        study_dir = tree / f"PAT{n:04d}" / f"ST{n:04d}"
        folders = [study_dir / "A", study_dir / "B", study_dir / "B" / "deep", study_dir / "C"]
        for k, index in enumerate(order):
            ds, cut = datasets[index]
            folder = folders[k % len(folders)]
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"IM{k:05d}"
            ds.save_as(path, enforce_file_format=True)
            if cut:
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 2])
    return ids


def _read_for_rewrite(path: Path) -> tuple[pydicom.Dataset, bool]:
    """A slice file to write again; a truncated one (the broken study's) comes back whole, to be cut again."""
    try:
        return pydicom.dcmread(path), False
    except Exception:  # noqa: BLE001 - the truncated slice of the broken study
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ds.PixelData = bytes(int(ds.Rows) * int(ds.Columns) * 2)
        return ds, True


def _describe(ds: pydicom.Dataset, study_uid: str, name: str, te: float, tr: float, image_type: list[str]) -> None:
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = f"{study_uid}.{ds.SeriesNumber}"
    ds.SeriesDescription = name
    ds.ProtocolName = name
    ds.EchoTime = f"{te:g}"
    ds.RepetitionTime = f"{tr:g}"
    ds.ImageType = image_type


def _localizer(sid: int, study_uid: str, rng: np.random.Generator) -> list[pydicom.Dataset]:
    """A three-plane localizer: one small image each, sagittal, coronal and axial."""
    planes = ((0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1), (1, 0, 0, 0, 1, 0))
    out = []
    for inst, iop in enumerate(planes, start=1):
        pixels = rng.integers(0, 400, size=(64, 64), dtype=np.uint16)
        ds = _dataset(sid, 9, inst, "", 9, pixels, iop, (-150.0, -150.0, 0.0), (4.6875, 4.6875), 8.0)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study_uid}.9.{inst}"
        name, te, tr = LOCALIZER
        _describe(ds, study_uid, name, te, tr, ["ORIGINAL", "PRIMARY", "LOCALIZER"])
        out.append(ds)
    return out


def _write_dicomdir(path: Path) -> None:
    """A stand-in DICOMDIR (Media Storage Directory SOP class, no records): the inventory skips it by name."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = f"{PYDICOM_ROOT_UID}0.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "BATCHSEG"
    ds.save_as(path, enforce_file_format=True)
