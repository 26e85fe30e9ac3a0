"""DICOM series -> NIfTI: pick the slice set, check its geometry, write one volume.

A folder is read in four steps. (1) Every file is sorted into an image, a file to ignore (not DICOM, or DICOM that
is no image: DICOMDIR, presentation states) or a bad file: one that claims to be a DICOM image (a .dcm name, the
DICM marker, an image SOP class) and cannot be read whole. A bad file fails the series, because a dropped end slice
gives a shorter volume that looks right. (2) The images are grouped by SeriesInstanceUID: one conversion reads one
series, never two merged. (3) Each image gives its slices: a classic file one, an enhanced multi-frame file one per
frame, placed by its functional groups. (4) The slices pass the same rules whatever file they came from: one
orientation, one size, no conflicting duplicates (several images per position are 4-D data), a regular step.

The slice set is decided from the headers alone; pixels are decoded only for the slices that are used. The output
keeps the DICOM storage order (i along the row direction, j along the column direction, k along the slice normal)
and states it in the affine, because the segmenter reorients by itself and every resampling costs accuracy.

`instance_planes` reads only the headers of a series folder and indexes each image's plane (`ImagePlane`) by its
InstanceNumber tag, so that a pixel named by instance number (RSNA's level annotations) is placed in world space
through that file's own geometry (`ImagePlane.pixel_to_world`, RAS+ mm, the frame of the NIfTI affine).
"""
from __future__ import annotations

import gzip
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from batchseg.errors import StudyError, one_line, printable
from batchseg.files import open_atomic

# gzip level of the written NIfTI. Level 1 is ~3x faster than zlib's default 6
# for a few percent larger files on MR data (see benchmarks/RESULTS.md).
GZIP_LEVEL = 1

PLANES = ("sagittal", "coronal", "axial")
# A stack is named after the patient axis its normal is closest to, unless the
# normal is tilted further than this from that axis. RSNA sagittals are tilted
# by up to ~20 degrees, so the limit is generous.
OBLIQUE_DEGREES = 30.0
# Two slices whose orientation cosines differ by less than this belong to one
# stack (scanners write the cosines with ~1e-6 noise).
ORIENTATION_TOL = 1e-3
# A step between neighbouring slices may differ from the typical step by this
# fraction before the series is called irregular (a missing slice is 100%).
SPACING_REL_TOL = 0.05
# Positions closer than this along the normal (mm) are the same slice.
DUPLICATE_TOL_MM = 0.01

# File names that claim to be DICOM: such a file that cannot be read fails the series instead of being ignored.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# Secondary Capture Image Storage and its multi-frame kinds (1.2.840.10008.5.1.4.1.1.7.x).
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_UNDEFINED_LENGTH = 0xFFFFFFFF

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class ConversionReport:
    """What the converter found and did; `to_dict` is what `convert --json` prints."""

    source: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
    plane: str
    slices_used: list[str]
    slices_dropped: list[dict]
    stacks: list[dict]
    warnings: list[str]
    dtype: str
    # Files in the folder that are not images of the series (README, DICOMDIR, presentation states, other series).
    files_ignored: list[dict] = field(default_factory=list)
    # The SeriesInstanceUID converted ("" when the files carry none).
    series_uid: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = [int(v) for v in self.shape]
        d["spacing"] = [float(v) for v in self.spacing]
        return d


@dataclass
class _Slice:
    """One 2-D image: a classic file, or one frame of a multi-frame file (pixels stay in `ds` until decoded)."""

    path: Path
    ds: pydicom.Dataset
    frame: int | None  # index of the frame in a multi-frame file; None for a single-frame file
    row_cos: np.ndarray  # LPS direction of increasing column index
    col_cos: np.ndarray  # LPS direction of increasing row index
    position: np.ndarray  # LPS position of the first voxel
    rows: int
    cols: int
    spacing: tuple[float, float]  # (between rows, between columns), as in PixelSpacing
    rescale: tuple[float, float]  # (slope, intercept) from stored values to output values

    @property
    def name(self) -> str:
        return _slice_name(self.path, self.frame)

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_cos, self.col_cos)
        return n / np.linalg.norm(n)


def _slice_name(path: Path, frame: int | None) -> str:
    """How messages and reports name a slice: the file name, and the frame (from 1) in a multi-frame file."""
    return path.name if frame is None else f"{path.name} frame {frame + 1}"


@dataclass
class _Stack:
    slices: list[_Slice]

    @property
    def first(self) -> _Slice:
        return self.slices[0]

    @property
    def plane(self) -> str:
        return plane_of(self.first.normal)

    def describe(self, chosen: bool) -> dict:
        s = self.first
        return {
            "plane": self.plane,
            "orientation": axcodes(s.row_cos, s.col_cos, s.normal),
            "image_orientation": [round(float(v), 6) for v in (*s.row_cos, *s.col_cos)],
            "n_slices": len(self.slices),
            "rows": s.rows,
            "cols": s.cols,
            "pixel_spacing": [float(s.spacing[0]), float(s.spacing[1])],
            "chosen": chosen,
        }


# ---------------------------------------------------------------- public API


def read_series(
    dicom_dir: Path, *, require_plane: str | None = "sagittal", study: str = "",
    series_uid: str | None = None, files: Iterable[Path] | None = None,
) -> tuple[np.ndarray, np.ndarray, ConversionReport]:
    """Read one DICOM series into (data, RAS affine, report).

    `dicom_dir` is the folder read (its files, not its subfolders). `series_uid` picks one SeriesInstanceUID when
    the folder holds several (without it such a folder is refused). `files`, when given, are read instead of
    listing the folder (the files of one series spread over a tree); `dicom_dir` then only names the source.

    Raises StudyError: input.missing, input.bad_dicom, input.mixed_series or input.geometry.
    """
    dicom_dir = Path(dicom_dir)
    err = _Errors(study, dicom_dir)
    if require_plane is not None and require_plane not in (*PLANES, "oblique"):
        raise ValueError(f"require_plane must be one of {PLANES} or None, not {require_plane!r}")
    if files is None:
        if not dicom_dir.is_dir():
            raise err("input.missing", f"DICOM folder {dicom_dir} does not exist")
        paths = sorted(p for p in dicom_dir.iterdir() if p.is_file())
    else:
        paths = sorted(Path(p) for p in files)

    scan = _scan(paths)
    images, ignored = _pick_series(scan, series_uid, dicom_dir, err)
    slices = [s for path, ds in images for s in _slices_of(path, ds, err)]
    sel = _select_slices(slices, require_plane, err)
    ordered, dropped, warn = sel.ordered, sel.dropped, sel.warnings
    step, step_warn = _check_spacing(ordered, err)
    warn += step_warn

    data, dtype_warn = _load_pixels(ordered, sel.pixels)
    warn += dtype_warn
    affine = _affine(ordered[0], step)
    report = ConversionReport(
        source=str(dicom_dir),
        shape=tuple(int(v) for v in data.shape),
        spacing=(float(ordered[0].spacing[1]), float(ordered[0].spacing[0]), float(step)),
        orientation="".join(nib.aff2axcodes(affine)),
        plane=plane_of(ordered[0].normal),
        slices_used=[s.name for s in ordered],
        slices_dropped=dropped,
        stacks=sel.stacks,
        warnings=[one_line(w) for w in warn],
        dtype=str(data.dtype),
        files_ignored=ignored,
        series_uid=_series_uid(images[0][1]),
    )
    return data, affine, report


def convert_series(
    dicom_dir: Path, out_path: Path, *, require_plane: str | None = "sagittal", study: str = "",
    series_uid: str | None = None, files: Iterable[Path] | None = None,
) -> ConversionReport:
    """Convert one series to `out_path` (.nii.gz or .nii) and return the report (arguments as `read_series`).

    The file is written beside `out_path` and renamed onto it when whole: a failure leaves whatever was at
    `out_path` before untouched.
    """
    return convert_series_volume(dicom_dir, out_path, require_plane=require_plane, study=study,
                                 series_uid=series_uid, files=files)[0]


def convert_series_volume(
    dicom_dir: Path, out_path: Path, *, require_plane: str | None = "sagittal", study: str = "",
    series_uid: str | None = None, files: Iterable[Path] | None = None,
) -> tuple[ConversionReport, np.ndarray, np.ndarray]:
    """`convert_series`, and the volume and RAS affine it wrote, exactly as stored (no scaling, same dtype):
    the pipeline's QC picture draws from them instead of reading the file back."""
    out_path = Path(out_path)
    check_nifti_name(out_path)
    data, affine, report = read_series(dicom_dir, require_plane=require_plane, study=study,
                                       series_uid=series_uid, files=files)
    try:
        write_nifti(data, affine, out_path)
    except OSError as e:
        raise _Errors(study, Path(dicom_dir))("output.io", f"cannot write {out_path}: {e}") from e
    return report, data, affine


def check_nifti_name(path: Path) -> None:
    """Raise ValueError unless `path` ends in .nii or .nii.gz (the gzip choice follows the name)."""
    if not Path(path).name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: the output must be named .nii or .nii.gz")


def write_nifti(data: np.ndarray, affine: np.ndarray, out_path: Path, *, level: int = GZIP_LEVEL) -> None:
    """Write a NIfTI-1 with sform and qform both scanner-anatomical (code 1), atomically."""
    out_path = Path(out_path)
    check_nifti_name(out_path)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_data_dtype(data.dtype)
    with open_atomic(out_path, "wb") as raw:
        if out_path.name.lower().endswith(".gz"):
            # mtime=0 and no file name in the gzip header keep the bytes identical across runs.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as fh:
                img.to_file_map({"image": nib.FileHolder(fileobj=fh)})
        else:
            img.to_file_map({"image": nib.FileHolder(fileobj=raw)})


def plane_of(normal: np.ndarray) -> str:
    """sagittal/coronal/axial by the patient axis the slice normal is closest to."""
    n = np.abs(np.asarray(normal, float))
    n = n / np.linalg.norm(n)
    axis = int(np.argmax(n))
    if np.degrees(np.arccos(min(1.0, n[axis]))) > OBLIQUE_DEGREES:
        return "oblique"
    return PLANES[axis]  # LPS axis 0 is L-R, 1 is A-P, 2 is S-I


def axcodes(row_cos: np.ndarray, col_cos: np.ndarray, normal: np.ndarray) -> str:
    """RAS axis codes of (row direction, column direction, normal) given in LPS."""
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = row_cos, col_cos, normal
    return "".join(nib.aff2axcodes(_LPS_TO_RAS @ m))


# ---------------------------------------------------------------- one image's plane: placing a pixel


@dataclass(frozen=True)
class ImagePlane:
    """Where one 2-D image file lies in the patient: what places a pixel coordinate in world space.

    The values are the file's own tags: ImagePositionPatient (LPS mm of the CENTRE of the first pixel, row 0
    column 0), ImageOrientationPatient (row direction: the way the column index grows; column direction: the
    way the row index grows; both LPS, normalised here) and PixelSpacing (between rows, between columns; mm).
    """

    file: str
    instance_number: int
    position: tuple[float, float, float]
    row_cos: tuple[float, float, float]
    col_cos: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    cols: int

    def pixel_to_world(self, x: float, y: float) -> np.ndarray:
        """World RAS+ mm of the point at column `x`, row `y` (pixel centres at whole numbers, 0 the first).

        x walks along the row direction by the spacing between columns (PixelSpacing[1]), y along the column
        direction by the spacing between rows (PixelSpacing[0]); the LPS sum is turned to RAS+.
        """
        lps = (np.asarray(self.position, float) + float(x) * self.pixel_spacing[1] * np.asarray(self.row_cos)
               + float(y) * self.pixel_spacing[0] * np.asarray(self.col_cos))
        return _LPS_TO_RAS[:3, :3] @ lps

    def holds(self, x: float, y: float) -> bool:
        """Whether (x, y) lies on the image: within half a pixel of the first and last pixel centres."""
        return -0.5 <= x <= self.cols - 0.5 and -0.5 <= y <= self.rows - 0.5


@dataclass
class InstancePlanes:
    """The image planes of a series folder by InstanceNumber (the tag, never the file name), and the
    instance numbers that cannot be placed with the reason (several files hold it, a multi-frame file, a
    malformed geometry tag)."""

    folder: str
    planes: dict[int, ImagePlane] = field(default_factory=dict)
    problems: dict[int, str] = field(default_factory=dict)

    def why_not(self, instance_number: int) -> str:
        """Why this instance cannot be placed ("" when it can)."""
        if instance_number in self.planes:
            return ""
        return self.problems.get(instance_number, f"no image with InstanceNumber {instance_number} in {self.folder}")


def instance_planes(series_dir: Path, *, series_uid: str | None = None) -> InstancePlanes:
    """Read the headers (not the pixels) of every DICOM file in `series_dir` and index their planes by the
    InstanceNumber tag. `series_uid` keeps only that SeriesInstanceUID (the one converted). Files that are not
    DICOM, or carry no InstanceNumber, are passed over. Raises StudyError (input.missing) when the folder is not
    there."""
    folder = Path(series_dir)
    if not folder.is_dir():
        raise StudyError("input.missing", f"series folder {folder} does not exist")
    err = _Errors("", folder)
    found: dict[int, list[tuple[str, ImagePlane | str]]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        ds = _read_header(path)
        if ds is None or (series_uid is not None and _series_uid(ds) != series_uid):
            continue
        try:
            number = int(ds.get("InstanceNumber"))
        except (TypeError, ValueError):
            continue
        found.setdefault(number, []).append((path.name, _plane_of(path, ds, number, err)))
    out = InstancePlanes(str(folder))
    for number, held in found.items():
        if len(held) > 1:
            names = ", ".join(printable(name) for name, _ in held[:3]) + (", ..." if len(held) > 3 else "")
            out.problems[number] = f"InstanceNumber {number} is held by {len(held)} files ({names}): not guessed"
        elif isinstance(held[0][1], str):
            out.problems[number] = held[0][1]
        else:
            out.planes[number] = held[0][1]
    return out


def _read_header(path: Path) -> pydicom.Dataset | None:
    """A DICOM file's header without its pixels; None for anything that is not a readable DICOM file."""
    try:
        with open(path, "rb") as fh:
            kind = sniff(fh.read(132))
    except OSError:
        return None
    if kind == "other":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True, force=kind != "dicom")
    except Exception:  # noqa: BLE001 - pydicom meets garbage with any exception type
        return None


def _plane_of(path: Path, ds: pydicom.Dataset, number: int, err: _Errors) -> ImagePlane | str:
    """The plane of a single-frame image, or why it has none (the same geometry checks as a conversion)."""
    frames = ds.get("NumberOfFrames", 1) or 1
    try:
        frames = int(frames)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return f"{printable(path.name)} (InstanceNumber {number}) lacks valid Rows/Columns"
    if frames != 1:
        return (f"{printable(path.name)} (InstanceNumber {number}) is a multi-frame image ({frames} frames): "
                "an instance number does not say which frame")
    try:
        s = _slice(path, ds, None, ds, ds, ds, (1.0, 0.0), rows, cols, err)
    except StudyError as exc:
        return exc.message
    return ImagePlane(file=path.name, instance_number=number, position=tuple(float(v) for v in s.position),
                      row_cos=tuple(float(v) for v in s.row_cos), col_cos=tuple(float(v) for v in s.col_cos),
                      pixel_spacing=s.spacing, rows=rows, cols=cols)


# ---------------------------------------------------------------- reading files


class _Errors:
    """Builds StudyErrors whose message names the study (or the folder)."""

    def __init__(self, study: str, folder: Path):
        self.prefix = f"study {study}: " if study else f"{folder}: "

    def __call__(self, cls: str, msg: str) -> StudyError:
        return StudyError(cls, self.prefix + msg)


@dataclass
class _Scan:
    """Every file of the folder, sorted into images, bad files and files to ignore."""

    images: list[tuple[Path, pydicom.Dataset]] = field(default_factory=list)
    # (file, why it cannot be read, its SeriesInstanceUID when the readable part names one)
    bad: list[tuple[Path, str, str | None]] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)


def _scan(paths: list[Path]) -> _Scan:
    scan = _Scan()
    for path in paths:
        ds, bad, why = _read_one(path)
        if ds is not None:
            scan.images.append((path, ds))
        elif bad is not None:
            scan.bad.append((path, why, bad))
        else:
            scan.ignored.append({"file": path.name, "reason": why})
    return scan


def sniff(head: bytes) -> str:
    """"dicom" (preamble + DICM), "raw" (may be preamble-less DICOM) or "other"."""
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    # Preamble-less DICOM starts with an element of group 0002 or 0008 (little
    # endian); anything else (text, images, archives) is not worth parsing.
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00"):
        return "raw"
    return "other"


def _cut_preamble(path: Path, head: bytes) -> bool:
    """A file named as PACS exports name images (no extension: IM_0001, or a UID such as 1.2.840.113619.2.5)
    that holds nothing but the start of a DICOM preamble (NUL bytes, part of "DICM"), or nothing at all: what
    such an image file looks like when its copy broke off at once."""
    bare = not path.suffix or path.suffix[1:].isdigit()
    if not bare or path.name.startswith("."):
        return False
    return len(head) < 132 and not head[:128].strip(b"\0") and b"DICM".startswith(head[128:])


def _read_one(path: Path) -> tuple[pydicom.Dataset | None, str | None, str]:
    """(image, None, "") for a DICOM image; (None, series_uid or "", why) for a file that claims to be a DICOM image
    and cannot be read whole; (None, None, why) for a file to ignore."""
    named = path.suffix.lower() in DICOM_SUFFIXES
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as e:
        return None, "", f"cannot be opened ({e.strerror or e})"
    kind = sniff(head)
    if kind == "other":
        if named or _cut_preamble(path, head):
            return None, "", ("is empty" if not head else
                              "is not DICOM or is cut short: no DICM marker and no DICOM element at its start")
        return None, None, "not DICOM"
    magic = kind == "dicom"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # Files without the preamble may be old-style DICOM: read them leniently
            # and keep them only if they look like an image.
            ds = pydicom.dcmread(path, force=not magic)
        except Exception as e:  # noqa: BLE001 - pydicom meets garbage with any exception type
            if magic or named:
                return None, "", f"is unreadable ({type(e).__name__}: {e})"
            return None, None, "not DICOM"
    try:
        sop = str(ds.get("SOPClassUID") or ds.get("file_meta", {}).get("MediaStorageSOPClassUID") or "")
        has_pixels = "PixelData" in ds
        looks_like_image = ("Rows" in ds or "ImagePositionPatient" in ds
                            or "PerFrameFunctionalGroupsSequence" in ds)
        series = _series_uid(ds)
        cut = _truncation(ds, caught)
    except Exception as e:  # noqa: BLE001 - a garbled header raises from anywhere in pydicom
        if magic or named:
            return None, "", f"is unreadable ({type(e).__name__}: {e})"
        return None, None, "not DICOM"
    sop_name = UID(sop).name if sop else ""
    image_sop = "Image Storage" in sop_name
    claims = magic or named or image_sop or looks_like_image
    if cut:
        if sop and not image_sop and not looks_like_image:
            return None, None, f"cut short ({cut}), and not an image ({sop_name})"
        return (None, series, f"is cut short ({cut})") if claims else (None, None, "not DICOM")
    if not has_pixels:
        if looks_like_image or image_sop:
            return None, series, "has image attributes but no pixel data (cut short?)"
        if not sop:
            if magic or named:
                # The marker or the name promised DICOM, yet nothing identifies what the file is.
                return None, "", "is unreadable (DICOM marker or name but no recognisable content)"
            return None, None, "not DICOM"
        return None, None, f"no pixel data ({sop_name})"
    if not (magic or named or looks_like_image):
        return None, None, "not DICOM"
    if "TransferSyntaxUID" not in ds.file_meta:
        # No file meta (pre-1993 style): the pixels are native, in the encoding the reader found.
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                          else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if sop.startswith(_SECONDARY_CAPTURE) and "ImagePositionPatient" not in ds:
        # A screenshot or scanned report filed with the series: an image, but not a slice.
        return None, None, f"image without patient position ({sop_name})"
    return ds, None, ""


def _truncation(ds: pydicom.Dataset, caught: list[warnings.WarningMessage]) -> str:
    """What shows that the file ends before its data does ("" if nothing).

    pydicom reads a cut file without an error: an undefined-length value (encapsulated pixels, a sequence)
    cut before its delimiter only warns, and a value cut midway is kept short. The last element, being read
    last, is the one a cut leaves short.
    """
    for w in caught:
        if "End of file" in str(w.message):
            return "the file ends before a delimiter"
    if not len(ds):
        return ""
    last = ds.get_item(max(ds.keys()))
    if isinstance(last, RawDataElement) and last.length != _UNDEFINED_LENGTH:
        got = len(last.value) if last.value is not None else 0
        if got < last.length:
            what = pydicom.datadict.keyword_for_tag(last.tag) or str(last.tag)
            return f"{what} holds {got} of its {last.length} bytes"
    return ""


def _series_uid(ds: pydicom.Dataset) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "")


def _pick_series(scan: _Scan, series_uid: str | None, folder: Path,
                 err: _Errors) -> tuple[list[tuple[Path, pydicom.Dataset]], list[dict]]:
    """The images of one series, and every file left out with the reason; refuse bad files and mixed folders."""
    ignored = list(scan.ignored)
    bad = []
    for path, why, uid in scan.bad:
        # A cut inside the SeriesInstanceUID leaves a prefix of it: only a UID that cannot be
        # the one asked for, cut short, puts the bad file in another series.
        if series_uid is not None and uid and not series_uid.startswith(uid):
            ignored.append({"file": path.name, "reason": f"unreadable, of another series ({uid}): {why}"})
        else:
            bad.append((path, why))
    if bad:
        (first, why), rest = bad[0], [p.name for p, _ in bad[1:]]
        more = f" (and {len(rest)} more: {', '.join(rest[:3])}{', ...' if len(rest) > 3 else ''})" if rest else ""
        raise err("input.bad_dicom", f"{first.name} {why}{more}")
    if not scan.images:
        raise err("input.missing", f"no DICOM image files in {folder}")

    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for path, ds in scan.images:
        groups.setdefault(_series_uid(ds), []).append((path, ds))
    if series_uid is None:
        if len(groups) > 1:
            raise err("input.mixed_series", f"the folder holds images of {len(groups)} series, which are never "
                                             f"merged: {_describe_series(groups)}")
        return scan.images, ignored
    if series_uid not in groups:
        raise err("input.missing", f"no images of series {series_uid} (found {_describe_series(groups)})")
    for uid, members in groups.items():
        if uid != series_uid:
            ignored += [{"file": path.name, "reason": f"other series ({uid or 'no SeriesInstanceUID'})"}
                        for path, _ in members]
    return groups[series_uid], ignored


def _describe_series(groups: dict[str, list[tuple[Path, pydicom.Dataset]]]) -> str:
    parts = []
    for uid, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        desc = str(members[0][1].get("SeriesDescription", "") or "")
        parts.append(f"{uid or '(no SeriesInstanceUID)'} ({len(members)} image{'s' * (len(members) != 1)}"
                     f"{', ' + repr(desc) if desc else ''})")
    return "; ".join(parts)


# ---------------------------------------------------------------- slices of a file


def _fmt_numbers(values: Iterable) -> str:
    """[1, 0.5, -3.25]: plain numbers for messages (a numpy scalar's repr says np.float64(...))."""
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


def _floats(holder: pydicom.Dataset | None, keyword: str, n: int, where: str, err: _Errors) -> np.ndarray:
    try:
        v = np.asarray([float(x) for x in holder[keyword].value], dtype=float)  # type: ignore[index]
    except (KeyError, TypeError, ValueError) as e:
        raise err("input.geometry", f"{where} lacks a valid {keyword}") from e
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise err("input.geometry", f"{where} has a malformed {keyword} {_fmt_numbers(v)}")
    return v


def _rescale_of(holder: pydicom.Dataset | None) -> tuple[float, float]:
    """(slope, intercept) as stated in `holder`; identity when absent or unusable."""
    if holder is None:
        return (1.0, 0.0)
    slope = holder.get("RescaleSlope", None)
    inter = holder.get("RescaleIntercept", None)
    try:
        slope = 1.0 if slope in (None, "") else float(slope)
        inter = 0.0 if inter in (None, "") else float(inter)
    except (TypeError, ValueError):
        return (1.0, 0.0)
    if not np.isfinite(slope) or slope == 0 or not np.isfinite(inter):
        return (1.0, 0.0)
    return (slope, inter)


def _is_mosaic(ds: pydicom.Dataset) -> bool:
    image_type = ds.get("ImageType") or []
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return any(str(v).strip().upper() == "MOSAIC" for v in values)


def _slices_of(path: Path, ds: pydicom.Dataset, err: _Errors) -> list[_Slice]:
    """The 2-D images of one file: one for a classic file, one per frame for an enhanced multi-frame file."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as e:
        raise err("input.bad_dicom", f"{path.name} lacks valid Rows/Columns") from e
    if spp != 1:
        raise err("input.bad_dicom", f"{path.name} has {spp} samples per pixel; only grayscale is supported")
    if _is_mosaic(ds):
        raise err("input.geometry", f"{path.name} is a Siemens mosaic (ImageType MOSAIC: several slices tiled in "
                                    f"one {rows}x{cols} image); mosaics are not converted here (dcm2niix reads them)")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    if per_frame is None and shared_seq is None:
        if frames != 1:
            raise err("input.bad_dicom", f"{path.name} is a multi-frame image ({frames} frames) without "
                                         "per-frame functional groups to place them")
        return [_slice(path, ds, None, ds, ds, ds, _rescale_of(ds), rows, cols, err)]

    # Enhanced multi-frame (Enhanced MR, Legacy Converted Enhanced, ...): each frame's geometry and rescale live
    # in its per-frame functional groups; the shared functional groups hold what all frames have in common.
    per_frame = per_frame or []
    if len(per_frame) != frames:
        raise err("input.bad_dicom", f"{path.name} has {frames} frames but {len(per_frame)} per-frame "
                                     "functional group items")
    shared = shared_seq[0] if shared_seq else None
    out = []
    for k in range(frames):
        transform = _group(per_frame[k], shared, "PixelValueTransformationSequence")
        out.append(_slice(path, ds, k, _group(per_frame[k], shared, "PlaneOrientationSequence"),
                          _group(per_frame[k], shared, "PlanePositionSequence"),
                          _group(per_frame[k], shared, "PixelMeasuresSequence"),
                          _rescale_of(transform if transform is not None else ds), rows, cols, err))
    return out


def _group(item: pydicom.Dataset, shared: pydicom.Dataset | None, keyword: str) -> pydicom.Dataset | None:
    """A frame's functional group `keyword` (its first item): the frame's own, else the shared one."""
    for holder in (item, shared):
        if holder is not None and keyword in holder and len(holder[keyword].value):
            return holder[keyword].value[0]
    return None


def _slice(path: Path, ds: pydicom.Dataset, frame: int | None, orientation: pydicom.Dataset | None,
           position: pydicom.Dataset | None, measures: pydicom.Dataset | None, rescale: tuple[float, float],
           rows: int, cols: int, err: _Errors) -> _Slice:
    """One slice from the elements that hold its geometry (the dataset itself, or a frame's functional groups)."""
    where = _slice_name(path, frame)
    iop = _floats(orientation, "ImageOrientationPatient", 6, where, err)
    ipp = _floats(position, "ImagePositionPatient", 3, where, err)
    ps = _floats(measures, "PixelSpacing", 2, where, err)
    row_cos, col_cos = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row_cos), np.linalg.norm(col_cos)
    if min(nr, nc) < 1e-6 or min(ps) <= 0 or np.linalg.norm(np.cross(row_cos, col_cos)) < 0.5 * nr * nc:
        raise err("input.geometry", f"{where} has degenerate ImageOrientationPatient {_fmt_numbers(iop)} "
                                    f"or PixelSpacing {_fmt_numbers(ps)}")
    return _Slice(path, ds, frame, row_cos / nr, col_cos / nc, ipp, rows, cols, (float(ps[0]), float(ps[1])),
                  rescale)


# ---------------------------------------------------------------- slice set


@dataclass
class _Selection:
    ordered: list[_Slice]  # the slices to convert, sorted along the normal
    dropped: list[dict]
    warnings: list[str]
    stacks: list[dict]
    pixels: _Pixels


def _select_slices(slices: list[_Slice], require_plane: str | None, err: _Errors) -> _Selection:
    """Apply the slice-set rules: one orientation, one size, no duplicates, at least two slices."""
    warn: list[str] = []
    dropped: list[dict] = []
    stacks = _group_by_orientation(slices)
    chosen = _choose_stack(stacks, require_plane, err)
    for st in stacks:
        if st is not chosen:
            why = f"other stack ({st.plane}, {len(st.slices)} slices)"
            dropped += [{"file": s.name, "reason": why} for s in st.slices]
    if len(stacks) > 1:
        warn.append(f"{len(stacks)} stacks of different orientation; converted the {chosen.plane} one "
                    f"with {len(chosen.slices)} slices")

    # Within the chosen orientation the slices must share one image geometry;
    # a minority of another size (a stray localizer, a re-scanned slice) is dropped.
    sized = [(st, _group_by_size(st.slices)) for st in stacks]
    by_size = next(groups for st, groups in sized if st is chosen)
    main = max(by_size, key=lambda g: len(g.slices))
    if len(by_size) > 1:
        if 2 * len(main.slices) <= len(chosen.slices):
            sizes = ", ".join(f"{g.first.rows}x{g.first.cols} @ {_fmt_spacing(g.first.spacing)} mm: "
                              f"{len(g.slices)}" for g in by_size)
            raise err("input.geometry", f"slices differ in size with no majority ({sizes})")
        for g in by_size:
            if g is not main:
                why = f"size {g.first.rows}x{g.first.cols} @ {_fmt_spacing(g.first.spacing)} mm differs from the stack"
                dropped += [{"file": s.name, "reason": why} for s in g.slices]
                warn.append(f"dropped {len(g.slices)} slice(s) of another size: "
                            + ", ".join(s.name for s in g.slices))

    pixels = _Pixels(err)
    ordered, dups = _order_slices(main.slices, pixels, err)
    dropped += dups
    if dups:
        warn.append(f"dropped {len(dups)} duplicate slice(s) with identical pixels")
    if len(ordered) < 2:
        raise err("input.geometry", f"only one slice ({ordered[0].name}); a volume needs at least two")
    stacks_found = [g.describe(chosen=(g is main)) for _, groups in sized for g in groups]
    return _Selection(ordered, dropped, warn, stacks_found, pixels)


def _group_by_orientation(slices: list[_Slice]) -> list[_Stack]:
    stacks: list[_Stack] = []
    for s in slices:
        for st in stacks:
            f = st.first
            if (np.abs(f.row_cos - s.row_cos).max() < ORIENTATION_TOL
                    and np.abs(f.col_cos - s.col_cos).max() < ORIENTATION_TOL):
                st.slices.append(s)
                break
        else:
            stacks.append(_Stack([s]))
    return stacks


def _group_by_size(slices: list[_Slice]) -> list[_Stack]:
    groups: dict[tuple, _Stack] = {}
    for s in slices:
        key = (s.rows, s.cols, round(s.spacing[0], 4), round(s.spacing[1], 4))
        groups.setdefault(key, _Stack([])).slices.append(s)
    return list(groups.values())


def _choose_stack(stacks: list[_Stack], require_plane: str | None, err: _Errors) -> _Stack:
    candidates = [st for st in stacks if require_plane is None or st.plane == require_plane]
    if not candidates:
        found = ", ".join(f"{st.plane} ({len(st.slices)} slices)" for st in stacks)
        raise err("input.geometry", f"no {require_plane} stack in the series (found {found})")
    # max() keeps the first of equals, and stacks are in file-name order: deterministic.
    return max(candidates, key=lambda st: len(st.slices))


def _order_slices(slices: list[_Slice], pixels: _Pixels, err: _Errors) -> tuple[list[_Slice], list[dict]]:
    """Sort along the normal; fold identical duplicates, fail on conflicting ones (named 4-D when they are)."""
    normal = slices[0].normal
    ordered = sorted(slices, key=lambda s: (float(s.position @ normal), s.path.name, s.frame or 0))
    positions: list[list[_Slice]] = []  # the distinct images at each position, in order along the normal
    dropped: list[dict] = []
    for s in ordered:
        if positions and abs(float((s.position - positions[-1][0].position) @ normal)) <= DUPLICATE_TOL_MM:
            twin = next((d for d in positions[-1] if _same_image(d, s, pixels)), None)
            if twin is None:
                positions[-1].append(s)
            else:
                dropped.append({"file": s.name, "reason": f"duplicate of {twin.name}"})
        else:
            positions.append([s])
    conflicts = [images for images in positions if len(images) > 1]
    if conflicts:
        raise err("input.geometry", _conflict_message(conflicts, len(positions)))
    return [images[0] for images in positions], dropped


def _same_image(a: _Slice, b: _Slice, pixels: _Pixels) -> bool:
    """A copy of one image (a file present twice): same pixels and rescale. Two frames of one
    multi-frame image are never copies of each other, even with equal pixels."""
    if a.frame is not None and b.frame is not None and a.frame != b.frame \
            and str(a.ds.get("SOPInstanceUID", "")) == str(b.ds.get("SOPInstanceUID", "")):
        return False
    pa, pb = pixels(a), pixels(b)
    return pa.shape == pb.shape and a.rescale == b.rescale and np.array_equal(pa, pb)


# What tells the volumes of 4-D data apart: (what it is, keyword in a classic image,
# (functional group, keyword) in an enhanced frame).
_VOLUME_TAGS = (
    ("echo time", "EchoTime", ("MREchoSequence", "EffectiveEchoTime")),
    ("echo number", "EchoNumbers", None),
    ("b-value", "DiffusionBValue", ("MRDiffusionSequence", "DiffusionBValue")),
    ("temporal position", "TemporalPositionIdentifier", ("FrameContentSequence", "TemporalPositionIndex")),
    ("trigger time", "TriggerTime", ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime")),
    ("image type", "ImageType", ("MRImageFrameTypeSequence", "FrameType")),
    ("acquisition number", "AcquisitionNumber", None),
)


def _volume_tag(s: _Slice, keyword: str, group: tuple[str, str] | None) -> str:
    if s.frame is None:
        return str(s.ds.get(keyword, ""))
    if group is None:
        return ""
    shared = s.ds.get("SharedFunctionalGroupsSequence")
    item = _group(s.ds.PerFrameFunctionalGroupsSequence[s.frame], shared[0] if shared else None, group[0])
    return "" if item is None else str(item.get(group[1], ""))


def _conflict_message(conflicts: list[list[_Slice]], n_positions: int) -> str:
    if 2 * len(conflicts) <= n_positions:
        a, b = conflicts[0][:2]
        return f"{a.name} and {b.name} share the position {_fmt_pos(b.position)} but hold different pixels"
    # Most positions hold several different images: several volumes of one geometry.
    counts = sorted({len(images) for images in conflicts})
    if len(conflicts) == n_positions and len(counts) == 1:
        how = f"{counts[0]} volumes at the same {n_positions} positions"
    else:
        how = f"{counts[0]} to {counts[-1]} images at {len(conflicts)} of {n_positions} positions"
    differ = [what for what, keyword, group in _VOLUME_TAGS
              if any(len({_volume_tag(s, keyword, group) for s in images}) > 1 for images in conflicts)]
    why = f" (they differ in {', '.join(differ)})" if differ else ""
    return (f"4-D data: {how}{why}, e.g. {conflicts[0][0].name} and {conflicts[0][1].name}; "
            "only one 3-D volume is converted: split the series first")


def _check_spacing(ordered: list[_Slice], err: _Errors) -> tuple[float, list[str]]:
    """The slice step along the normal; fail on a gap or uneven steps."""
    normal = ordered[0].normal
    pos = np.array([s.position for s in ordered])
    along = pos @ normal
    steps = np.diff(along)
    typical = float(np.median(steps))
    for i, d in enumerate(steps):
        if abs(d - typical) > SPACING_REL_TOL * typical:
            a, b = ordered[i], ordered[i + 1]
            ratio = d / typical
            n_missing = round(ratio) - 1
            what = (f"missing slice{'s' if n_missing > 1 else ''}" if n_missing >= 1 and abs(ratio - round(ratio)) < 0.1
                    else "irregular spacing")
            raise err("input.geometry", f"{what}: gap of {d:.3g} mm between {a.name} "
                                        f"({along[i]:.2f} mm) and {b.name} ({along[i + 1]:.2f} mm) "
                                        f"where the step is {typical:.3g} mm")
    # The slices must line up along the normal; a sheared stack (gantry tilt)
    # cannot be described by this affine.
    inplane = pos - np.outer(along - along[0], normal) - pos[0]
    drift = float(np.abs(inplane).max())
    if drift > 0.1 * min(ordered[0].spacing):
        raise err("input.geometry", f"slice positions drift {drift:.3g} mm within the image plane "
                                    "(sheared or tilted stack)")
    step = float((along[-1] - along[0]) / (len(ordered) - 1))
    warn = []
    if np.abs(steps - step).max() > 1e-3 * step + 1e-4:
        warn.append(f"slice steps vary from {steps.min():.4g} to {steps.max():.4g} mm; used their mean {step:.4g} mm")
    return step, warn


# ---------------------------------------------------------------- pixels


class _Pixels:
    """Decodes a slice's stored values; a multi-frame file is decoded once and kept for its other frames."""

    def __init__(self, err: _Errors):
        self.err = err
        self.frames: dict[int, np.ndarray] = {}

    def __call__(self, s: _Slice) -> np.ndarray:
        if s.frame is None:
            arr = self._decode(s)
        else:
            block = self.frames.get(id(s.ds))
            if block is None:
                block = self._decode(s)
                if block.ndim == 2:  # pydicom drops the frame axis of a one-frame file
                    block = block[np.newaxis]
                self.frames[id(s.ds)] = block
            if s.frame >= block.shape[0]:
                raise self.err("input.bad_dicom", f"{s.path.name}: pixel data holds {block.shape[0]} frames, "
                                                  f"frame {s.frame + 1} is missing")
            arr = block[s.frame]
        if arr.shape != (s.rows, s.cols):
            raise self.err("input.bad_dicom", f"{s.name}: pixel data has shape {arr.shape}, "
                                              f"header says {s.rows}x{s.cols}")
        return arr

    def _decode(self, s: _Slice) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return s.ds.pixel_array
        except Exception as e:  # noqa: BLE001 - decoders raise anything from RuntimeError to struct.error
            raise self.err("input.bad_dicom", f"{s.path.name}: pixel data cannot be decoded "
                                              f"({type(e).__name__}: {e})") from e


def _load_pixels(ordered: list[_Slice], pixels: _Pixels) -> tuple[np.ndarray, list[str]]:
    """Decode into one (slices, rows, cols) block and return it as (cols, rows, slices).

    The transpose is a view: the C-ordered block is exactly the Fortran order
    NIfTI stores, so nibabel writes it without another copy.
    """
    first = pixels(ordered[0])
    vol = np.empty((len(ordered), *first.shape), dtype=first.dtype)
    vol[0] = first
    for k, s in enumerate(ordered[1:], start=1):
        a = pixels(s)
        if a.dtype != vol.dtype:
            vol = vol.astype(np.result_type(vol.dtype, a.dtype))
        vol[k] = a
    warn: list[str] = []
    scales = [s.rescale for s in ordered]
    if any(sc != (1.0, 0.0) for sc in scales):
        vol = _apply_rescale(vol, scales)
    if len(set(scales)) > 1:
        warn.append("rescale slope/intercept differ between slices")
    return vol.transpose(2, 1, 0), warn


def _apply_rescale(vol: np.ndarray, scales: list[tuple[float, float]]) -> np.ndarray:
    """Stored values * slope + intercept, in an integer type when that is exact."""
    all_int = all(float(m).is_integer() and float(b).is_integer() for m, b in scales)
    if all_int and np.issubdtype(vol.dtype, np.integer):
        lo, hi = int(vol.min()), int(vol.max())
        ends = [v * int(m) + int(b) for m, b in scales for v in (lo, hi)]
        for dt in (vol.dtype, np.int16, np.uint16, np.int32):
            info = np.iinfo(dt)
            if info.min <= min(ends) and max(ends) <= info.max:
                out = np.empty(vol.shape, dtype=dt)
                for k, (m, b) in enumerate(scales):
                    out[k] = vol[k].astype(np.int64) * int(m) + int(b)
                return out
    out = np.empty(vol.shape, dtype=np.float32)
    for k, (m, b) in enumerate(scales):
        out[k] = vol[k].astype(np.float64) * m + b
    return out


def _affine(first: _Slice, step: float) -> np.ndarray:
    """Voxel (i=column, j=row, k=slice) -> RAS mm."""
    m = np.eye(4)
    m[:3, 0] = first.row_cos * first.spacing[1]  # i walks along a row: the spacing between columns
    m[:3, 1] = first.col_cos * first.spacing[0]  # j walks down a column: the spacing between rows
    m[:3, 2] = first.normal * step
    m[:3, 3] = first.position
    return _LPS_TO_RAS @ m


def _fmt_spacing(sp: tuple[float, float]) -> str:
    return f"{sp[0]:.4g}x{sp[1]:.4g}"


def _fmt_pos(p: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in p) + ")"
