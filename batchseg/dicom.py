"""DICOM series -> NIfTI: pick the slice set, check its geometry, write one volume.

The slice set is decided from the headers alone (orientation, size, position
along the slice normal); pixels are decoded only for the slices that are used.
The output keeps the DICOM storage order (i along the row direction, j along
the column direction, k along the slice normal) and states it in the affine,
because the segmenter reorients by itself and every resampling costs accuracy.
"""
from __future__ import annotations

import contextlib
import gzip
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from batchseg.errors import StudyError

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

# Secondary Capture Image Storage and its multi-frame kinds (1.2.840.10008.5.1.4.1.1.7.x).
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

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
    # Files in the folder that are not DICOM images (README, DICOMDIR, presentation states).
    files_ignored: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = [int(v) for v in self.shape]
        d["spacing"] = [float(v) for v in self.spacing]
        return d


@dataclass
class _Slice:
    """One image file's header facts (pixels stay in `ds` until decoded)."""

    path: Path
    ds: pydicom.Dataset
    row_cos: np.ndarray  # LPS direction of increasing column index
    col_cos: np.ndarray  # LPS direction of increasing row index
    position: np.ndarray  # LPS position of the first voxel
    rows: int
    cols: int
    spacing: tuple[float, float]  # (between rows, between columns), as in PixelSpacing

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.row_cos, self.col_cos)
        return n / np.linalg.norm(n)


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
    dicom_dir: Path, *, require_plane: str | None = "sagittal", study: str = ""
) -> tuple[np.ndarray, np.ndarray, ConversionReport]:
    """Read one DICOM series folder into (data, RAS affine, report).

    Raises StudyError: input.missing, input.bad_dicom or input.geometry.
    """
    dicom_dir = Path(dicom_dir)
    err = _Errors(study, dicom_dir)
    if require_plane is not None and require_plane not in (*PLANES, "oblique"):
        raise ValueError(f"require_plane must be one of {PLANES} or None, not {require_plane!r}")
    if not dicom_dir.is_dir():
        raise err("input.missing", f"DICOM folder {dicom_dir} does not exist")

    slices, ignored = _read_headers(dicom_dir, err)
    if not slices:
        raise err("input.missing", f"no DICOM image files in {dicom_dir}")

    sel = _select_slices(slices, require_plane, err)
    ordered, dropped, warn = sel.ordered, sel.dropped, sel.warnings
    step, step_warn = _check_spacing(ordered, err)
    warn += step_warn

    data, dtype_warn = _load_pixels(ordered, err)
    warn += dtype_warn
    affine = _affine(ordered[0], step)
    report = ConversionReport(
        source=str(dicom_dir),
        shape=tuple(int(v) for v in data.shape),
        spacing=(float(ordered[0].spacing[1]), float(ordered[0].spacing[0]), float(step)),
        orientation="".join(nib.aff2axcodes(affine)),
        plane=plane_of(ordered[0].normal),
        slices_used=[s.path.name for s in ordered],
        slices_dropped=dropped,
        stacks=sel.stacks,
        warnings=warn,
        dtype=str(data.dtype),
        files_ignored=ignored,
    )
    return data, affine, report


def convert_series(
    dicom_dir: Path, out_path: Path, *, require_plane: str | None = "sagittal", study: str = ""
) -> ConversionReport:
    """Convert one series folder to `out_path` (.nii.gz or .nii) and return the report."""
    data, affine, report = read_series(dicom_dir, require_plane=require_plane, study=study)
    try:
        write_nifti(data, affine, Path(out_path))
    except OSError as e:
        with contextlib.suppress(OSError):
            Path(out_path).unlink(missing_ok=True)
        raise _Errors(study, Path(dicom_dir))("output.io", f"cannot write {out_path}: {e}") from e
    return report


def write_nifti(data: np.ndarray, affine: np.ndarray, out_path: Path, *, level: int = GZIP_LEVEL) -> None:
    """Write a NIfTI-1 with sform and qform both scanner-anatomical (code 1)."""
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_data_dtype(data.dtype)
    if out_path.name.endswith(".gz"):
        # mtime=0 and no file name in the gzip header keep the bytes identical across runs.
        with open(out_path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                        compresslevel=level, mtime=0) as fh:
            img.to_file_map({"image": nib.FileHolder(fileobj=fh)})
    else:
        img.to_filename(out_path)


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


# ---------------------------------------------------------------- reading


class _Errors:
    """Builds StudyErrors whose message names the study (or the folder)."""

    def __init__(self, study: str, folder: Path):
        self.prefix = f"study {study}: " if study else f"{folder}: "

    def __call__(self, cls: str, msg: str) -> StudyError:
        return StudyError(cls, self.prefix + msg)


def _read_headers(folder: Path, err: _Errors) -> tuple[list[_Slice], list[dict]]:
    slices: list[_Slice] = []
    ignored: list[dict] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        ds, why = _read_one(path, err)
        if ds is None:
            ignored.append({"file": path.name, "reason": why})
            continue
        slices.append(_slice_of(path, ds, err))
    return slices, ignored


def _sniff(path: Path) -> str:
    """"dicom" (preamble + DICM), "raw" (may be preamble-less DICOM) or "other"."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    # Preamble-less DICOM starts with an element of group 0002 or 0008 (little
    # endian); anything else (text, images, archives) is not worth parsing.
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00"):
        return "raw"
    return "other"


def _read_one(path: Path, err: _Errors) -> tuple[pydicom.Dataset | None, str]:
    """Read a whole file; (None, why) for files that are not DICOM images."""
    try:
        kind = _sniff(path)
    except OSError as e:
        raise err("input.bad_dicom", f"{path.name} cannot be opened ({e.strerror or e})") from e
    if kind == "other":
        return None, "not DICOM"
    magic = kind == "dicom"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Files without the preamble may be old-style DICOM: read them leniently
            # and keep them only if they look like an image.
            ds = pydicom.dcmread(path, force=not magic)
    except Exception as e:  # noqa: BLE001 - pydicom meets garbage with any exception type
        if magic:
            raise err("input.bad_dicom", f"{path.name} is unreadable ({type(e).__name__}: {e})") from e
        return None, "not DICOM"
    try:
        has_pixels = "PixelData" in ds
        looks_like_image = "Rows" in ds or "ImagePositionPatient" in ds
    except Exception as e:  # noqa: BLE001 - a garbled header raises from anywhere in pydicom
        if magic:
            raise err("input.bad_dicom", f"{path.name} is unreadable ({type(e).__name__}: {e})") from e
        return None, "not DICOM"
    if not magic and not (has_pixels and looks_like_image):
        return None, "not DICOM"
    if has_pixels and "TransferSyntaxUID" not in ds.file_meta:
        # No file meta (pre-1993 style): the pixels are native, in the encoding the reader found.
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                          else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if not has_pixels:
        if looks_like_image:
            raise err("input.bad_dicom", f"{path.name} has image attributes but no pixel data (truncated?)")
        sop = ds.get("SOPClassUID") or ds.get("file_meta", {}).get("MediaStorageSOPClassUID")
        if not sop:
            # The preamble promised DICOM, yet nothing identifies what the file is.
            raise err("input.bad_dicom", f"{path.name} is unreadable (DICOM preamble but no recognisable content)")
        return None, f"no pixel data ({getattr(sop, 'name', sop)})"
    sop = str(ds.get("SOPClassUID", ""))
    if sop.startswith(_SECONDARY_CAPTURE) and "ImagePositionPatient" not in ds:
        # A screenshot or scanned report filed with the series: an image, but not a slice.
        return None, f"image without patient position ({getattr(ds.SOPClassUID, 'name', sop)})"
    return ds, ""


def _floats(ds: pydicom.Dataset, keyword: str, n: int, path: Path, err: _Errors) -> np.ndarray:
    try:
        v = np.asarray([float(x) for x in ds[keyword].value], dtype=float)
    except (KeyError, TypeError, ValueError) as e:
        raise err("input.geometry", f"{path.name} lacks a valid {keyword}") from e
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise err("input.geometry", f"{path.name} has a malformed {keyword} {list(v)}")
    return v


def _slice_of(path: Path, ds: pydicom.Dataset, err: _Errors) -> _Slice:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as e:
        raise err("input.bad_dicom", f"{path.name} lacks valid Rows/Columns") from e
    if frames != 1:
        raise err("input.bad_dicom", f"{path.name} is a multi-frame image ({frames} frames); "
                                     "only single-frame series are supported")
    if spp != 1:
        raise err("input.bad_dicom", f"{path.name} has {spp} samples per pixel; only grayscale is supported")
    iop = _floats(ds, "ImageOrientationPatient", 6, path, err)
    ipp = _floats(ds, "ImagePositionPatient", 3, path, err)
    ps = _floats(ds, "PixelSpacing", 2, path, err)
    row_cos, col_cos = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row_cos), np.linalg.norm(col_cos)
    if min(nr, nc) < 1e-6 or min(ps) <= 0 or np.linalg.norm(np.cross(row_cos, col_cos)) < 0.5 * nr * nc:
        raise err("input.geometry", f"{path.name} has degenerate ImageOrientationPatient {list(iop)} "
                                    f"or PixelSpacing {list(ps)}")
    return _Slice(path, ds, row_cos / nr, col_cos / nc, ipp, rows, cols, (float(ps[0]), float(ps[1])))


# ---------------------------------------------------------------- slice set


@dataclass
class _Selection:
    ordered: list[_Slice]  # the slices to convert, sorted along the normal
    dropped: list[dict]
    warnings: list[str]
    stacks: list[dict]


def _select_slices(slices: list[_Slice], require_plane: str | None, err: _Errors) -> _Selection:
    """Apply the slice-set rules: one orientation, one size, no duplicates, at least two slices."""
    warn: list[str] = []
    dropped: list[dict] = []
    stacks = _group_by_orientation(slices)
    chosen = _choose_stack(stacks, require_plane, err)
    for st in stacks:
        if st is not chosen:
            why = f"other stack ({st.plane}, {len(st.slices)} slices)"
            dropped += [{"file": s.path.name, "reason": why} for s in st.slices]
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
                dropped += [{"file": s.path.name, "reason": why} for s in g.slices]
                warn.append(f"dropped {len(g.slices)} slice(s) of another size: "
                            + ", ".join(s.path.name for s in g.slices))

    ordered, dups = _order_slices(main.slices, err)
    dropped += dups
    if dups:
        warn.append(f"dropped {len(dups)} duplicate slice(s) with identical pixels")
    if len(ordered) < 2:
        raise err("input.geometry", f"only one slice ({ordered[0].path.name}); a volume needs at least two")
    stacks_found = [g.describe(chosen=(g is main)) for _, groups in sized for g in groups]
    return _Selection(ordered, dropped, warn, stacks_found)


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


def _order_slices(slices: list[_Slice], err: _Errors) -> tuple[list[_Slice], list[dict]]:
    """Sort along the normal; fold identical duplicates, fail on conflicting ones."""
    normal = slices[0].normal
    ordered = sorted(slices, key=lambda s: (float(s.position @ normal), s.path.name))
    kept: list[_Slice] = [ordered[0]]
    dropped: list[dict] = []
    for s in ordered[1:]:
        prev = kept[-1]
        if abs(float((s.position - prev.position) @ normal)) > DUPLICATE_TOL_MM:
            kept.append(s)
            continue
        a, b = _pixels(prev, err), _pixels(s, err)
        same = a.shape == b.shape and np.array_equal(a, b) and _rescale(prev) == _rescale(s)
        if not same:
            raise err("input.geometry", f"{prev.path.name} and {s.path.name} share the position "
                                        f"{_fmt_pos(s.position)} but hold different pixels")
        dropped.append({"file": s.path.name, "reason": f"duplicate of {prev.path.name}"})
    return kept, dropped


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
            raise err("input.geometry", f"{what}: gap of {d:.3g} mm between {a.path.name} "
                                        f"({along[i]:.2f} mm) and {b.path.name} ({along[i + 1]:.2f} mm) "
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


def _pixels(s: _Slice, err: _Errors) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = s.ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoders raise anything from RuntimeError to struct.error
        raise err("input.bad_dicom", f"{s.path.name}: pixel data cannot be decoded "
                                     f"({type(e).__name__}: {e})") from e
    if arr.shape != (s.rows, s.cols):
        raise err("input.bad_dicom", f"{s.path.name}: pixel data has shape {arr.shape}, "
                                     f"header says {s.rows}x{s.cols}")
    return arr


def _rescale(s: _Slice) -> tuple[float, float]:
    slope = s.ds.get("RescaleSlope", None)
    inter = s.ds.get("RescaleIntercept", None)
    try:
        slope = 1.0 if slope in (None, "") else float(slope)
        inter = 0.0 if inter in (None, "") else float(inter)
    except (TypeError, ValueError):
        return (1.0, 0.0)
    if not np.isfinite(slope) or slope == 0 or not np.isfinite(inter):
        return (1.0, 0.0)
    return (slope, inter)


def _load_pixels(ordered: list[_Slice], err: _Errors) -> tuple[np.ndarray, list[str]]:
    """Decode into one (slices, rows, cols) block and return it as (cols, rows, slices).

    The transpose is a view: the C-ordered block is exactly the Fortran order
    NIfTI stores, so nibabel writes it without another copy.
    """
    first = _pixels(ordered[0], err)
    vol = np.empty((len(ordered), *first.shape), dtype=first.dtype)
    vol[0] = first
    for k, s in enumerate(ordered[1:], start=1):
        a = _pixels(s, err)
        if a.dtype != vol.dtype:
            vol = vol.astype(np.result_type(vol.dtype, a.dtype))
        vol[k] = a
    warn: list[str] = []
    scales = [_rescale(s) for s in ordered]
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
