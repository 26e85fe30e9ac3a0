"""The QC picture: one sagittal slice, upright, with the labels drawn on it and the vertebrae named.

The slice axis is the voxel axis whose world direction is closest to left-right;
the slice is the one through the spine (the median of the vertebral points of
the sequence along that axis), falling back to the middle. The picture is shown
the way radiologists look at a sagittal: superior up, anterior left, with the
pixel aspect ratio taken from the voxel spacing.

Made to be read at the report's thumbnail size (~150 px high): only vertebrae
and the sacrum are named, in a large font, anterior to each body; discs get a
tick; names never leave the picture and never overlap; a label that a caveat
names is marked "!" in red (and a caveated disc is named, posterior to it).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .measures import Measurements

HEIGHT = 512            # pixels of the image part; the title band comes on top
FONT_SIZE = 28          # ~8 px in a 150 px thumbnail
TITLE_BAND = FONT_SIZE + 10
ALPHA = 0.45            # overlay opacity
CAVEAT_COLOR = (255, 60, 60)
CAVEAT_MARK = " !"
MARGIN = 3              # pixels kept free at the picture's edges
STROKE = 2              # black outline around names, so they read on any background


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


@dataclass(frozen=True)
class PlacedText:
    """A name drawn on the picture: its text, its box in picture pixels (x0, y0, x1, y1), what it names."""

    text: str
    box: tuple[float, float, float, float]
    label: int
    caveat: bool


def write_qc_png(image: np.ndarray, affine: np.ndarray, mask: np.ndarray, measurements: Measurements, out: Path,
                 *, title: str = "") -> list[PlacedText]:
    """Write the QC picture to `out`; returns the names drawn on it."""
    canvas, texts = render_qc(image, affine, mask, measurements, title=title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return texts


def render_qc(image: np.ndarray, affine: np.ndarray, mask: np.ndarray, measurements: Measurements,
              *, title: str = "") -> tuple[Image.Image, list[PlacedText]]:
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[3] == 1:
        image = image[..., 0]
    mask = np.asarray(mask)
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be 3-D arrays of one shape")
    affine = np.asarray(affine, float)
    lr, si, ap, flip_v, flip_h = display_axes(affine)
    sequence = measurements.sequence

    along = [e.centroid_voxel[lr] for e in sequence.vertebral] or [s.centroid_voxel[lr] for s in measurements.structures]
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

    title_font = _font()
    flagged = set(measurements.lstv.caveat_labels)
    band = TITLE_BAND if (title or flagged) else 0
    if band:
        framed = Image.new("RGB", (width, HEIGHT + band), (0, 0, 0))
        framed.paste(canvas, (0, band))
        canvas = framed
    draw = ImageDraw.Draw(canvas)

    def place(point: tuple[float, float, float]) -> tuple[float, float]:
        """Voxel point -> display pixel (x, y) of the picture (the flips and the scale)."""
        v, h = point[si], point[ap]
        if flip_v:
            v = nv - 1 - v
        if flip_h:
            h = nh - 1 - h
        return (h + 0.5) * width / nh, (v + 0.5) * HEIGHT / nv

    def extent(label: int, y: float) -> np.ndarray:
        return np.flatnonzero(lab_big[min(max(int(y), 0), HEIGHT - 1)] == label)

    anatomical = measurements.labels_anatomical
    # Smaller letters only when there are more names than lines of the full size (a whole-spine image).
    n_names = max(len(sequence.vertebral), sum(1 for e in sequence.entries if e.kind == "disc" and e.label in flagged))
    size = max(10, min(FONT_SIZE, (HEIGHT - 2 * MARGIN) // max(n_names, 1) - 2 * STROKE - 2))
    font = _font(size)
    rank = {v: n + 1 for n, v in enumerate(sorted({e.label for e in sequence.vertebral if e.kind == "vertebra"}))}
    # (y, x of the text's left edge, text, colour, label): vertebrae anterior to the body, caveated discs posterior.
    anterior: list[tuple[float, float, str, tuple[int, int, int], int]] = []
    posterior: list[tuple[float, float, str, tuple[int, int, int], int]] = []
    for e in sequence.entries:
        x, y = place(e.centroid_voxel)
        hit = extent(e.label, y)
        mark = e.label in flagged
        if e.kind == "disc":
            # A tick on the anterior side; a caveated disc is also named, posterior to it.
            x0 = float(hit.min()) if hit.size else x
            yy = y + band
            draw.line([(max(x0 - 14, 0), yy), (max(x0 - 2, 0), yy)], fill=label_color(e.label), width=3)
            if mark:
                text = e.name + CAVEAT_MARK
                x1 = float(hit.max()) if hit.size else x
                posterior.append((y, x1 + 6, text, CAVEAT_COLOR, e.label))
            continue
        short = e.name if anatomical else ("sacrum" if e.kind == "sacrum" else f"#{rank[e.label]}")
        text = short + (CAVEAT_MARK if mark else "")
        tw = draw.textlength(text, font=font)
        x0 = float(hit.min()) if hit.size else x
        anterior.append((y, x0 - 6 - tw, text, CAVEAT_COLOR if mark else label_color(e.label), e.label))

    line = size + 2 * STROKE + 2
    # A picture narrower than its widest name (a thin slab of a field of view) gets a black strip on the right.
    legend = f"{CAVEAT_MARK.strip()} caveat" if flagged else ""
    widest = max([draw.textlength(n[2], font=font) + 2 * STROKE + 2 * MARGIN for n in anterior + posterior]
                 + [draw.textlength(legend, font=title_font) + 2 * MARGIN])
    if widest > width:
        wider = Image.new("RGB", (int(np.ceil(widest)), canvas.height), (0, 0, 0))
        wider.paste(canvas, (0, 0))
        canvas, width = wider, wider.width
        draw = ImageDraw.Draw(canvas)
    if flagged:
        lw = draw.textlength(legend, font=title_font)
        draw.text((max(MARGIN, width - lw - MARGIN), 4), legend, fill=CAVEAT_COLOR, font=title_font)
        width_for_title = width - lw - 3 * MARGIN
    else:
        width_for_title = width - 2 * MARGIN
    if title:
        draw.text((MARGIN, 4), _fit(draw, title, title_font, width_for_title), fill=(255, 255, 255), font=title_font)
    placed = []
    for names in (anterior, posterior):     # each side spread on its own: they never meet
        for (y, tx, text, color, label), ty in zip(*_spread(names, line)):
            tw = draw.textlength(text, font=font) + 2 * STROKE
            tx = float(min(max(tx, MARGIN), max(MARGIN, width - tw - MARGIN))) + STROKE
            draw.text((tx, ty + band), text, fill=color, font=font, stroke_width=STROKE, stroke_fill=(0, 0, 0))
            box = draw.textbbox((tx, ty + band), text, font=font, stroke_width=STROKE)
            placed.append(PlacedText(text, tuple(float(v) for v in box), label, text.endswith(CAVEAT_MARK)))
    return canvas, placed


def _spread(names: list[tuple], line: int) -> tuple[list[tuple], list[float]]:
    """Names sorted top to bottom with the top of each text box, `line` pixels apart and inside the picture."""
    names = sorted(names, key=lambda n: n[0])
    tops = [y - line / 2 for y, *_ in names]
    for n in range(len(tops)):
        lo = tops[n - 1] + line if n else MARGIN
        tops[n] = max(tops[n], lo)
    for n in reversed(range(len(tops))):
        hi = tops[n + 1] - line if n + 1 < len(tops) else HEIGHT - line - MARGIN
        tops[n] = min(tops[n], hi)
    return names, [max(t, 0.0) for t in tops]


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


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


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow >= 10 (setup.cfg) with FreeType scales its built-in font; without FreeType only the small bitmap exists.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):
        return ImageFont.load_default()
