"""Writes small synthetic MR DICOM series for the converter's tests and benchmark.

`write_series` makes a regular stack from a (slices, rows, cols) volume; its
keyword arguments bend one rule each (instance order, rescale, transfer syntax,
...). Quirks that break the stack (a missing slice, a duplicate, a truncated
file) are made by the tests themselves from the paths it returns, with
`write_slice` for extra files. `write_enhanced` turns classic files (synthetic
or real) into one Enhanced MR Image Storage file.
"""
from __future__ import annotations

import io
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.encaps import encapsulate
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    MRImageStorage,
    generate_uid,
)

# LPS direction cosines (row direction, column direction) of the usual planes.
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))  # i runs A->P, j S->I, the normal toward R
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))
AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def tilted_sagittal(degrees: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A sagittal plane turned about the S-I axis, as RSNA sagittals often are."""
    t = np.radians(degrees)
    row = (float(np.sin(t)), float(np.cos(t)), 0.0)
    return row, (0.0, 0.0, -1.0)


def make_volume(n_slices: int = 12, rows: int = 64, cols: int = 48, *, dtype=np.int16,
                high: int = 1000, seed: int = 0) -> np.ndarray:
    """A (slices, rows, cols) volume with structure in every axis (so that a flip or a
    swapped slice changes the values) and some noise (so that codecs do real work)."""
    rng = np.random.default_rng(seed)
    k, r, c = np.meshgrid(np.arange(n_slices), np.arange(rows), np.arange(cols), indexing="ij")
    base = (0.45 * high * (1 + np.sin(r / 7.0 + k / 3.0) * np.cos(c / 5.0))
            + 3.0 * c + 2.0 * k)
    vol = base + rng.integers(0, max(2, high // 50), size=base.shape)
    info = np.iinfo(dtype)
    return np.clip(vol, info.min, info.max).astype(dtype)


@dataclass
class Series:
    """What `write_series` wrote: files in slice order (position along the normal)."""

    paths: list[Path]
    volume: np.ndarray  # (slices, rows, cols), stored values
    row_cos: np.ndarray
    col_cos: np.ndarray
    normal: np.ndarray
    origin: np.ndarray  # LPS position of the first voxel of slice 0
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    step: float
    series_uid: str

    def position(self, k: int) -> np.ndarray:
        return self.origin + k * self.step * self.normal

    def ras_affine(self) -> np.ndarray:
        """The affine the converter should produce, built from the definition."""
        lps = np.eye(4)
        lps[:3, 0] = self.row_cos * self.pixel_spacing[1]
        lps[:3, 1] = self.col_cos * self.pixel_spacing[0]
        lps[:3, 2] = self.normal * self.step
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    def expected_data(self) -> np.ndarray:
        """(cols, rows, slices): the storage order the converter keeps."""
        return self.volume.transpose(2, 1, 0)


def make_dataset(pixels: np.ndarray, *, row_cos, col_cos, position, pixel_spacing,
                 instance: int, slice_thickness: float = 4.0, rescale: tuple[float, float] | None = None,
                 series_uid: str, study_uid: str, frame_uid: str) -> FileDataset:
    """One uncompressed MR Image Storage dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "MR"
    ds.PatientID = "synthetic"
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientPosition = "HFS"
    ds.SeriesDescription = "T2"
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(instance)
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    ds.SliceThickness = f"{slice_thickness:.6f}"
    ds.SliceLocation = f"{float(np.dot(position, np.cross(row_cos, col_cos))):.6f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if np.issubdtype(pixels.dtype, np.signedinteger) else 0
    if rescale is not None:
        ds.RescaleSlope = f"{rescale[0]:g}"
        ds.RescaleIntercept = f"{rescale[1]:g}"
        ds.RescaleType = "US"
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def write_series(folder: Path, volume: np.ndarray | None = None, *,
                 orientation=SAGITTAL, pixel_spacing=(0.8, 0.6), step: float = 4.0,
                 origin=(-22.0, -30.0, 40.0), slice_thickness: float | None = None,
                 rescale: tuple[float, float] | None = None,
                 instance_order: str = "ascending", file_names: str = "instance",
                 transfer_syntax: str | None = None, name_prefix: str = "",
                 series_uid: str | None = None, seed: int = 0) -> Series:
    """Write one regular stack, one file per slice, into `folder`.

    instance_order: "ascending" | "descending" | "shuffled" | "gaps" (InstanceNumber
    against position along the normal). file_names: "instance" (<InstanceNumber>.dcm,
    as in RSNA) or "uid". transfer_syntax: None (explicit little endian) or a UID
    given to `compress`. slice_thickness defaults to anything but the step, so
    that a converter using it gets the geometry wrong. series_uid: a new one unless
    given (give another stack's to put two stacks into one series).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if volume is None:
        volume = make_volume(seed=seed)
    row_cos, col_cos = (np.asarray(v, float) for v in orientation)
    normal = np.cross(row_cos, col_cos)
    n = volume.shape[0]
    instances = {
        "ascending": list(range(1, n + 1)),
        "descending": list(range(n, 0, -1)),
        "gaps": [3 * i + 7 for i in range(n)],
    }.get(instance_order)
    if instances is None:
        if instance_order != "shuffled":
            raise ValueError(instance_order)
        instances = list(range(1, n + 1))
        random.Random(seed).shuffle(instances)
    uids = dict(series_uid=series_uid or generate_uid(), study_uid=generate_uid(), frame_uid=generate_uid())
    origin = np.asarray(origin, float)
    thickness = slice_thickness if slice_thickness is not None else step * 0.75
    paths = []
    for k in range(n):
        ds = make_dataset(volume[k], row_cos=row_cos, col_cos=col_cos, position=origin + k * step * normal,
                          pixel_spacing=pixel_spacing, instance=instances[k], slice_thickness=thickness,
                          rescale=rescale, **uids)
        name = f"{name_prefix}{instances[k]}.dcm" if file_names == "instance" else f"{ds.SOPInstanceUID}.dcm"
        path = folder / name
        save(ds, path, transfer_syntax)
        paths.append(path)
    return Series(paths, volume, row_cos, col_cos, normal, origin, tuple(pixel_spacing), step, uids["series_uid"])


def write_slice(path: Path, pixels: np.ndarray, *, like: Path, position=None, instance: int | None = None,
                orientation=None, pixel_spacing=None) -> Path:
    """Write one more slice that shares the series UIDs of the file `like`."""
    ref = pydicom.dcmread(like)
    ds = make_dataset(
        pixels,
        row_cos=[float(v) for v in (orientation[0] if orientation else ref.ImageOrientationPatient[:3])],
        col_cos=[float(v) for v in (orientation[1] if orientation else ref.ImageOrientationPatient[3:])],
        position=[float(v) for v in (position if position is not None else ref.ImagePositionPatient)],
        pixel_spacing=[float(v) for v in (pixel_spacing or ref.PixelSpacing)],
        instance=instance if instance is not None else int(ref.InstanceNumber) + 1000,
        series_uid=ref.SeriesInstanceUID, study_uid=ref.StudyInstanceUID, frame_uid=ref.FrameOfReferenceUID,
    )
    save(ds, path, None)
    return path


def _item(**elements) -> Sequence:
    """A one-item sequence holding `elements` (keyword=value)."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return Sequence([ds])


def write_enhanced(classic: list[Path], path: Path, *, shared: tuple[str, ...] = ("PlaneOrientationSequence",
                   "PixelMeasuresSequence"), order: list[int] | None = None,
                   echoes: tuple[float, ...] = (), transfer_syntax: str | None = None) -> Path:
    """One Enhanced MR Image Storage file whose frames are the classic files' slices.

    Each frame's geometry is copied from its classic header as written (the decimal strings, so a correct
    reader finds the same numbers): ImagePositionPatient into the frame's PlanePositionSequence, the
    orientation and pixel spacing into the functional groups named in `shared` (shared by all frames) or,
    when left out of it, into every frame's own; each frame's rescale into its PixelValueTransformationSequence.
    `order` permutes the frames (the standard fixes no order). `echoes` makes a multi-echo file: the frames are
    repeated once per echo time (MREchoSequence), with the pixels of echo e divided by e + 1.
    """
    src = [pydicom.dcmread(p) for p in classic]
    first = src[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName",
                    "PatientPosition", "StudyDate", "SeriesDescription", "SeriesNumber", "Modality"):
        if keyword in first:
            setattr(ds, keyword, first[keyword].value)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, keyword, first[keyword].value)
    order = list(range(len(src))) if order is None else order
    frames = [(e, k) for e in range(max(1, len(echoes))) for k in order]
    ds.NumberOfFrames = len(frames)

    def geometry(c: Dataset) -> dict[str, Sequence]:
        return {"PlaneOrientationSequence": _item(ImageOrientationPatient=c.ImageOrientationPatient),
                "PixelMeasuresSequence": _item(PixelSpacing=c.PixelSpacing,
                                               SliceThickness=c.get("SliceThickness", "1"))}

    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    for keyword, seq in geometry(first).items():
        if keyword in shared:
            setattr(ds.SharedFunctionalGroupsSequence[0], keyword, seq)
    ds.DimensionIndexSequence = Sequence([Dataset(), Dataset()])
    for dim, (pointer, group) in zip(ds.DimensionIndexSequence, [(0x00189082, 0x00189114), (0x00209057, 0x00209111)]):
        dim.DimensionIndexPointer = pointer  # EffectiveEchoTime, InStackPositionNumber
        dim.FunctionalGroupPointer = group  # MREchoSequence, FrameContentSequence
    per_frame, pixels = [], []
    dtype = first.pixel_array.dtype
    for e, k in frames:
        c = src[k]
        item = Dataset()
        item.PlanePositionSequence = _item(ImagePositionPatient=c.ImagePositionPatient)
        for keyword, seq in geometry(c).items():
            if keyword not in shared:
                setattr(item, keyword, seq)
        item.FrameContentSequence = _item(StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[e + 1, k + 1])
        item.PixelValueTransformationSequence = _item(RescaleSlope=c.get("RescaleSlope", "1"),
                                                      RescaleIntercept=c.get("RescaleIntercept", "0"),
                                                      RescaleType="US")
        if echoes:
            item.MREchoSequence = _item(EffectiveEchoTime=echoes[e])
        per_frame.append(item)
        pixels.append((c.pixel_array // (e + 1)).astype(dtype))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(pixels).astype(dtype.newbyteorder("<")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    save(ds, path, transfer_syntax)
    return path


def save(ds: FileDataset, path: Path, transfer_syntax: str | None) -> None:
    if transfer_syntax is not None:
        compress(ds, transfer_syntax)
    ds.save_as(path, enforce_file_format=True)


def compress(ds: FileDataset, transfer_syntax: str) -> None:
    """Re-encode the pixel data in place.

    pydicom's own encoders cover RLE, JPEG-LS and JPEG 2000. JPEG baseline is
    encoded with Pillow (8-bit only) and JPEG lossless (process 14, SV1 or any) with the
    small encoder below, since no installed package writes it.
    """
    pixels = ds.pixel_array
    if transfer_syntax == JPEGBaseline8Bit:
        if ds.BitsAllocated != 8:
            raise ValueError("JPEG baseline needs 8-bit pixels")
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, format="JPEG", quality=95)
        _set_encapsulated(ds, buf.getvalue(), transfer_syntax)
    elif transfer_syntax in (JPEGLosslessSV1, JPEGLossless):  # predictor 1 is valid in both
        if ds.PixelRepresentation:
            raise ValueError("the test encoder writes unsigned pixels only")
        _set_encapsulated(ds, jpeg_lossless_sv1(pixels, ds.BitsStored), transfer_syntax)
    else:
        kwargs = {}
        if str(transfer_syntax).endswith(".4.91"):  # JPEG 2000 lossy
            kwargs = {"j2k_psnr": [80]}
        elif str(transfer_syntax).endswith(".4.81"):  # JPEG-LS near lossless
            kwargs = {"jls_error": 2}
        ds.compress(transfer_syntax, **kwargs)


def _set_encapsulated(ds: FileDataset, frame: bytes, transfer_syntax: str) -> None:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    if transfer_syntax == JPEGBaseline8Bit:
        ds.LossyImageCompression = "01"


def jpeg_lossless_sv1(pixels: np.ndarray, precision: int) -> bytes:
    """Encode a 2-D unsigned image as lossless JPEG (ITU T.81 process 14, predictor 1).

    Predictor 1 is "the pixel to the left"; the first column uses the pixel above,
    and the first pixel 2**(P-1). Differences are coded with one Huffman table
    whose code for category s is s ones followed by a zero (a valid prefix code
    for the 17 categories; short to write, not small).
    """
    img = pixels.astype(np.int64)
    rows, cols = img.shape
    pred = np.empty_like(img)
    pred[:, 1:] = img[:, :-1]
    pred[1:, 0] = img[:-1, 0]
    pred[0, 0] = 1 << (precision - 1)
    diff = (img - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)  # modulo 2**16, signed

    # Huffman table: category s (0..16) gets code 1^s 0 for s < 16, and 1^16 for s = 16.
    lengths = [0] * 16
    symbols = list(range(17))
    for s in symbols:
        lengths[min(s + 1, 16) - 1] += 1
    codes = {s: (((1 << (s + 1)) - 2, s + 1) if s < 16 else ((1 << 16) - 1, 16)) for s in symbols}

    out = bytearray(b"\xff\xd8")
    out += b"\xff\xc3" + struct.pack(">HBHHBBBB", 11, precision, rows, cols, 1, 1, 0x11, 0)
    dht = bytes([0x00]) + bytes(lengths) + bytes(symbols)
    out += b"\xff\xc4" + struct.pack(">H", 2 + len(dht)) + dht
    out += b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0x00, 1, 0, 0)

    acc, nbits, data = 0, 0, bytearray()
    for d in diff.ravel().tolist():
        s = 0 if d == 0 else int(abs(d)).bit_length()
        code, clen = codes[s]
        acc = (acc << clen) | code
        nbits += clen
        if 0 < s < 16:
            extra = d if d > 0 else d + (1 << s) - 1
            acc = (acc << s) | extra
            nbits += s
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            data.append(byte)
            if byte == 0xFF:
                data.append(0x00)  # byte stuffing
        acc &= (1 << nbits) - 1
    if nbits:
        byte = ((acc << (8 - nbits)) | ((1 << (8 - nbits)) - 1)) & 0xFF  # pad with ones
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)
    out += data + b"\xff\xd9"
    return bytes(out)
