"""The QC picture: one sagittal slice, upright, with the labels and their names drawn on it.

The slice axis is the voxel axis whose world direction is closest to left-right;
the slice is the one through the labelled spine (the median of the structures'
centroids along that axis), falling back to the middle. The picture is shown
the way radiologists look at a sagittal: superior up, anterior left, with the
pixel aspect ratio taken from the voxel spacing.
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .measures import Measurements

HEIGHT = 512            # pixels of the image part; the title band comes on top
TITLE_BAND = 18
ALPHA = 0.45            # overlay opacity


def display_axes(affine: np.ndarray) -> tuple[int, int, int, bool, bool]:
    """(slice axis, vertical axis, horizontal axis, flip vertical, flip horizontal).

    Vertical is the voxel axis closest to superior-inferior, horizontal the one
    left; flips make row 0 superior and column 0 anterior (RAS: +z, +y).
    """
    a = np.asarray(affine, float)[:3, :3]
    dirs = a / np.linalg.norm(a, axis=0)
    lr = int(np.argmax(np.abs(dirs[0])))
    rest = [ax for ax in range(3) if ax != lr]
    si = max(rest, key=lambda ax: abs(dirs[2, ax]))
    ap = rest[0] if rest[1] == si else rest[1]
    return lr, si, ap, bool(dirs[2, si] > 0), bool(dirs[1, ap] > 0)


def write_qc_png(image: np.ndarray, affine: np.ndarray, mask: np.ndarray, measurements: Measurements, out: Path,
                 *, title: str = "") -> None:
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[3] == 1:
        image = image[..., 0]
    mask = np.asarray(mask)
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be 3-D arrays of one shape")
    affine = np.asarray(affine, float)
    lr, si, ap, flip_v, flip_h = display_axes(affine)

    along = [s.centroid_voxel[lr] for s in measurements.structures]
    idx = int(round(float(np.median(along)))) if along else image.shape[lr] // 2
    idx = min(max(idx, 0), image.shape[lr] - 1)
    img2 = _orient(np.take(image, idx, axis=lr), lr, si, ap, flip_v, flip_h).astype(np.float64)
    lab2 = _orient(np.take(mask, idx, axis=lr), lr, si, ap, flip_v, flip_h)

    sp_v = float(np.linalg.norm(affine[:3, si]))
    sp_h = float(np.linalg.norm(affine[:3, ap]))
    nv, nh = img2.shape
    scale = HEIGHT / (nv * sp_v)                         # output pixels per mm
    width = max(1, int(round(nh * sp_h * scale)))

    gray = _window(img2)
    big = np.asarray(Image.fromarray(gray).resize((width, HEIGHT), Image.Resampling.BILINEAR))
    # Nearest-neighbour for labels: output pixel centres mapped back onto the slice grid.
    rows = np.minimum(((np.arange(HEIGHT) + 0.5) * nv / HEIGHT).astype(int), nv - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * nh / width).astype(int), nh - 1)
    lab_big = lab2[rows][:, cols]

    rgb = np.repeat(big[:, :, None], 3, axis=2).astype(np.float64)
    labels = [int(v) for v in np.unique(lab_big) if v != 0]
    for v in labels:
        sel = lab_big == v
        rgb[sel] = (1 - ALPHA) * rgb[sel] + ALPHA * np.array(label_color(v), float)
    canvas = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))

    band = TITLE_BAND if title else 0
    if band:
        framed = Image.new("RGB", (width, HEIGHT + band), (0, 0, 0))
        framed.paste(canvas, (0, band))
        canvas = framed
    draw = ImageDraw.Draw(canvas)
    font = _font()
    if title:
        draw.text((4, 3), title, fill=(255, 255, 255), font=font)

    for s in measurements.structures:
        # Centroid -> display pixel (the flips and the scale of the picture).
        v = s.centroid_voxel[si]
        h = s.centroid_voxel[ap]
        if flip_v:
            v = nv - 1 - v
        if flip_h:
            h = nh - 1 - h
        y = (v + 0.5) * HEIGHT / nv
        x = (h + 0.5) * width / nh
        text = s.anatomical_label
        tw = draw.textlength(text, font=font)
        row = lab_big[min(max(int(y), 0), HEIGHT - 1)]
        hit = np.flatnonzero(row == s.instance_id)
        # Discs are named on the anterior (left) side, everything else posterior, so they do not collide.
        if s.kind == "disc":
            tx = (hit.min() if hit.size else x) - tw - 4
        else:
            tx = (hit.max() if hit.size else x) + 4
        tx = float(min(max(tx, 0), max(0, width - tw)))
        ty = y + band - 6
        draw.text((tx, ty), text, fill=label_color(s.instance_id), font=font, stroke_width=1, stroke_fill=(0, 0, 0))

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")


def label_color(label: int) -> tuple[int, int, int]:
    """A stable bright colour per label (golden-ratio hue steps keep neighbours apart)."""
    hue = (int(label) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _orient(sl: np.ndarray, lr: int, si: int, ap: int, flip_v: bool, flip_h: bool) -> np.ndarray:
    """A slice taken along `lr` as (vertical, horizontal) with superior up, anterior left."""
    remaining = [ax for ax in range(3) if ax != lr]
    out = sl if remaining == [si, ap] else sl.T
    if flip_v:
        out = out[::-1]
    if flip_h:
        out = out[:, ::-1]
    return out


def _window(img: np.ndarray) -> np.ndarray:
    """1st-99th percentile window to 0..255."""
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        hi = lo + 1.0
    g = (np.nan_to_num(img, nan=lo) - lo) / (hi - lo)
    return np.ascontiguousarray(np.clip(g * 255.0, 0, 255).astype(np.uint8))


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()
