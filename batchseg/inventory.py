"""Which layout a dataset has, and its inventory: the one entry point `init` calls.

| layout | `--dataset` names | module |
|---|---|---|
| rsna | the Kaggle folder: `<split>_series_descriptions.csv` + `<split>_images/` | dataset.py |
| bids | a BIDS folder: `sub-*/[ses-*/]anat/*_T2w.nii[.gz]` | bids.py |
| manifest | a CSV file: `study_id,path[,series_id]` | manifest.py |
| dicom | any folder of DICOM files (a PACS export) | dicom_tree.py |
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import LAYOUTS
from .dataset import DatasetError, Inventory

__all__ = ["LAYOUTS", "Detected", "detect_layout", "choose_layout", "build"]


@dataclass(frozen=True)
class Detected:
    layout: str
    why: str


def detect_layout(dataset: Path, split: str = "train") -> Detected:
    """The layout of `dataset`, from what is there (nothing is read beyond folder listings)."""
    dataset = Path(dataset)
    if dataset.is_file():
        return Detected("manifest", "a file, read as a manifest CSV")
    if not dataset.is_dir():
        raise DatasetError("dataset.layout", f"{dataset}: no such file or folder")
    csvs = sorted(p.name for p in dataset.glob("*_series_descriptions.csv"))
    if csvs or (dataset / f"{split}_images").is_dir():
        return Detected("rsna", f"it holds {csvs[0] if csvs else f'{split}_images/'}")
    if (dataset / "dataset_description.json").is_file() or any(p.is_dir() for p in dataset.glob("sub-*")):
        return Detected("bids", "it holds sub-* folders" if any(dataset.glob("sub-*")) else
                        "it holds dataset_description.json")
    return Detected("dicom", "no RSNA CSV, no BIDS sub-* folders: read as a tree of DICOM files")


def choose_layout(explicit: str | None, dataset: Path, *, split: str = "train",
                  saved: str | None = None) -> Detected:
    """--layout when given, else the project's layout for the same dataset, else what detection says."""
    if explicit:
        return Detected(explicit, "--layout")
    if saved:
        return Detected(saved, "as in batchseg.toml")
    detected = detect_layout(dataset, split)
    return Detected(detected.layout, f"detected: {detected.why}; --layout chooses another")


def build(layout: str, dataset: Path, project_dir: Path, *, split: str = "train",
          study_list: list[str] | None = None, limit: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> Inventory:
    """The inventory of `dataset` read as `layout`; DatasetError stops `init`."""
    if layout == "rsna":
        from .dataset import build_inventory

        return build_inventory(dataset, split=split, study_list=study_list, limit=limit)
    if layout == "bids":
        from .bids import build_inventory as build_bids

        return build_bids(dataset, study_list=study_list, limit=limit)
    if layout == "manifest":
        from .manifest import build_inventory as build_manifest

        return build_manifest(dataset, project_dir, study_list=study_list, limit=limit)
    if layout == "dicom":
        from .dicom_tree import build_inventory as build_tree

        return build_tree(dataset, project_dir, study_list=study_list, limit=limit, progress=progress)
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
