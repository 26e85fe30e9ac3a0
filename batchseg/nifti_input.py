"""NIfTI inputs (BIDS files, manifest rows): the checks a converted DICOM series passes, then into place.

A NIfTI input skips conversion, not scrutiny: it must be one 3-D volume of finite numbers with a
known orientation whose slice axis is sagittal, as `dicom.read_series(require_plane="sagittal")`
demands of a DICOM series. It then reaches `<out>/nifti/<study>_T2w.nii.gz` unchanged: a `.nii.gz`
is copied byte for byte (or symlinked, `nifti_input = "link"`), a `.nii` is gzip-compressed as it
is (the same header and voxels; a link would put an uncompressed file under a `.nii.gz` name).

The slice axis is the voxel axis with the coarsest spacing (sagittal spine series have 3-6 mm steps
between 0.3-1.2 mm pixels); when no axis is coarser by COARSER_BY, the third axis, where converters
put the slice direction. The plane is that of the slice normal (the cross product of the two in-plane
axes), named by `dicom.plane_of`, the converter's own rule.
"""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .dicom import plane_of
from .errors import StudyError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# The slice axis must be this much coarser than the in-plane axes to be told apart by spacing alone.
COARSER_BY = 1.1


def is_nifti_name(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


@dataclass(frozen=True)
class NiftiFacts:
    """What the header says (no voxel is read): enough to choose among several images."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]      # mm per voxel step along each axis, from the affine
    slice_axis: int                 # 0, 1 or 2
    plane: str                      # of the slice normal: sagittal | coronal | axial | oblique
    orientation: str                # RAS axis codes of the voxel axes, e.g. "PIL"

    @property
    def n_slices(self) -> int:
        return int(self.shape[self.slice_axis]) if len(self.shape) == 3 else 0

    def describe(self) -> str:
        return (f"{self.plane}, {self.n_slices} slices along axis {self.slice_axis} "
                f"({self.spacing[self.slice_axis]:.2f} mm)" if len(self.shape) == 3 else f"shape {self.shape}")


@dataclass
class NiftiReport:
    """What `place_nifti` checked and did; stored in the study's metadata as input.conversion."""

    source: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    plane: str
    slice_axis: int
    dtype: str
    placed: str                     # copied | linked | compressed
    series_uid: str = ""            # a NIfTI input names no DICOM series

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = [int(v) for v in self.shape]
        d["spacing"] = [float(v) for v in self.spacing]
        return d


def header_facts(path: Path) -> NiftiFacts:
    """The header facts of a NIfTI file; raises StudyError input.bad_nifti when it cannot be read."""
    image = _load(Path(path), "")
    return _facts(image)


def check_nifti(path: Path, *, study: str = "") -> tuple[nib.Nifti1Image, NiftiFacts]:
    """Load `path` and refuse it unless it is one finite 3-D volume with a sagittal slice axis.

    input.missing (no such file), input.bad_nifti (unreadable, truncated, not numbers, NaN or
    infinite voxels), input.geometry (not 3-D, no orientation, a singular affine, one slice, not sagittal).
    """
    path = Path(path)
    who = f"study {study}: " if study else ""
    if not path.is_file():
        raise StudyError("input.missing", f"{who}NIfTI file {path} does not exist")
    image = _load(path, who)
    name = path.name
    if len(image.shape) != 3:
        raise StudyError("input.geometry", f"{who}{name} has shape {tuple(image.shape)}; one 3-D volume is needed")
    qcode, scode = int(image.header["qform_code"]), int(image.header["sform_code"])
    if qcode == 0 and scode == 0:
        raise StudyError("input.geometry", f"{who}{name} has neither an sform nor a qform: its orientation is unknown")
    affine = image.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise StudyError("input.geometry", f"{who}{name} has a singular or non-finite affine")
    facts = _facts(image)
    if facts.n_slices < 2:
        raise StudyError("input.geometry", f"{who}{name} has one slice along its slice axis; a volume needs two")
    if facts.plane != "sagittal":
        raise StudyError("input.geometry", f"{who}{name}: no sagittal stack (its slice axis {facts.slice_axis} "
                                           f"is {facts.plane}, orientation {facts.orientation})")
    try:
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # noqa: BLE001 - gzip, zlib and nibabel each raise their own kind
        raise StudyError("input.bad_nifti", f"{who}{name} cannot be read to the end (truncated?): "
                                            f"{type(exc).__name__}: {exc}") from exc
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise StudyError("input.bad_nifti", f"{who}{name} holds {data.dtype} voxels, not real numbers")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise StudyError("input.bad_nifti", f"{who}{name} has {bad} NaN or infinite voxel(s)")
    return image, facts


def place_nifti(source: Path, dest: Path, *, link: bool = False, study: str = "") -> NiftiReport:
    """Check `source` and put it at `dest` (a .nii.gz path): copied, symlinked (`link`) or compressed."""
    source = Path(source)
    image, facts = check_nifti(source, study=study)
    if source.name.lower().endswith(".nii.gz"):
        if link:
            os.symlink(source.resolve(), dest)
            placed = "linked"
        else:
            shutil.copyfile(source, dest)
            placed = "copied"
    else:
        # mtime=0 and no name in the gzip header: the same input gives the same bytes on every run.
        with open(source, "rb") as raw, open(dest, "wb") as out, \
                gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=1, mtime=0) as packed:
            shutil.copyfileobj(raw, packed, 1 << 20)
        placed = "compressed"
    return NiftiReport(source=str(source), shape=tuple(int(v) for v in image.shape),
                       spacing=tuple(float(v) for v in facts.spacing), orientation=facts.orientation,
                       plane=facts.plane, slice_axis=facts.slice_axis, dtype=str(image.get_data_dtype()),
                       placed=placed)


def _load(path: Path, who: str) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
    except FileNotFoundError:
        raise StudyError("input.missing", f"{who}NIfTI file {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - nibabel meets garbage with any exception type
        raise StudyError("input.bad_nifti", f"{who}{path.name} is not a readable NIfTI file: "
                                            f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(image, nib.Nifti1Image):   # Nifti2Image is a subclass
        raise StudyError("input.bad_nifti", f"{who}{path.name} is a {type(image).__name__}, not NIfTI")
    return image


def _facts(image: nib.Nifti1Image) -> NiftiFacts:
    shape = tuple(int(v) for v in image.shape)
    affine = np.asarray(image.affine, float)
    axes = affine[:3, :3]
    spacing = tuple(float(v) for v in np.linalg.norm(axes, axis=0))
    if len(shape) != 3 or not np.all(np.isfinite(axes)):
        return NiftiFacts(shape, spacing, 2, "unknown", "")
    order = np.argsort(spacing)
    coarsest = int(order[-1])
    slice_axis = coarsest if spacing[coarsest] >= COARSER_BY * spacing[int(order[-2])] else 2
    in_plane = [a for a in range(3) if a != slice_axis]
    normal = np.cross(axes[:, in_plane[0]], axes[:, in_plane[1]])
    plane = plane_of(normal) if np.linalg.norm(normal) > 0 else "unknown"
    orientation = "".join(nib.aff2axcodes(affine)) if np.linalg.norm(normal) > 0 else ""
    return NiftiFacts(shape, spacing, slice_axis, plane, orientation)
