"""Pictures for people: grids of scenes with boxes drawn on them (ground truth now, predictions later).

Everything writes plain PNG files with Pillow, so it works on a headless machine without matplotlib.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .scenes import real_box_rows

#: One colour per box index (slot 0 red, slot 1 green, ...), repeating when there are more boxes.
DEFAULT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)

_PAD = 2  # pixels between cells
_CAPTION_HEIGHT = 12


def _as_grey_uint8(images) -> np.ndarray:
    """(N,H,W) uint8 from uint8 (0..255) or float (0..1) images, (N,H,W) or (N,1,H,W), numpy or torch."""
    if hasattr(images, "detach"):  # a torch tensor: no torch import needed here
        images = images.detach().cpu().numpy()
    a = np.asarray(images)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise InputError(f"images must be (N,H,W) or (N,1,H,W), got shape {a.shape}")
    if len(a) == 0:
        raise InputError("no images to draw")
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        return (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.dtype.kind in "iub":
        return np.clip(a, 0, 255).astype(np.uint8)
    raise InputError(f"images must be uint8 or float, got {a.dtype}")


def _valid_boxes(b) -> list[tuple[int, np.ndarray]]:
    """``(row index, box)`` for the boxes of one image, skipping padding rows (any negative or non-finite
    coordinate). The row index is kept so a box keeps its slot's colour even when earlier rows are padding."""
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4) if np.size(b) else np.zeros((0, 4))
    return [(int(j), b[j]) for j in np.flatnonzero(real_box_rows(b))]


def draw_scene_grid(
    images,
    boxes: Sequence[np.ndarray] | np.ndarray | None,
    path: str | os.PathLike,
    ncols: int = 8,
    scale: int = 3,
    colours: Sequence[tuple[int, int, int]] = DEFAULT_COLOURS,
    captions: Sequence[str] | None = None,
    line_width: int = 1,
) -> Path:
    """Write a PNG grid of ``images`` with their ``boxes`` drawn as rectangle outlines; return the path.

    ``images``: (N,H,W) or (N,1,H,W), uint8 0..255 or float 0..1. ``boxes``: per image an (n_i,4) array of
    ``(x_min, y_min, x_max, y_max)`` in image pixels with exclusive max edges (the ``Scenes.boxes`` convention,
    so a ``Scenes.boxes`` (N,K,4) array can be passed as is); rows with a negative or non-finite coordinate are
    padding and skipped; ``None`` draws no boxes. Row ``j`` of every image gets ``colours[j % len(colours)]``,
    so the slot of a box (ground-truth digit or model step) reads the same across the grid. ``captions``: an
    optional short text per image, written under it (e.g. the digit count). Each image is enlarged ``scale``
    times with nearest-neighbour sampling so pixels stay sharp.
    """
    grey = _as_grey_uint8(images)
    n, h, w = grey.shape
    if not isinstance(ncols, int) or ncols < 1:
        raise InputError(f"ncols must be a positive integer, got {ncols!r}")
    if not isinstance(scale, int) or scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale!r}")
    if not colours:
        raise InputError("colours must not be empty")
    if boxes is not None and len(boxes) != n:
        raise InputError(f"{len(boxes)} box sets for {n} images")
    if captions is not None and len(captions) != n:
        raise InputError(f"{len(captions)} captions for {n} images")

    cell_w, cell_h = w * scale, h * scale
    cap_h = _CAPTION_HEIGHT if captions is not None else 0
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    grid = Image.new("RGB", (_PAD + ncols * (cell_w + _PAD), _PAD + nrows * (cell_h + cap_h + _PAD)), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i in range(n):
        r, c = divmod(i, ncols)
        x0, y0 = _PAD + c * (cell_w + _PAD), _PAD + r * (cell_h + cap_h + _PAD)
        cell = Image.fromarray(grey[i]).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        grid.paste(cell.convert("RGB"), (x0, y0))
        if boxes is not None:
            for j, (bx0, by0, bx1, by1) in _valid_boxes(boxes[i]):
                if bx1 <= bx0 or by1 <= by0:
                    continue
                # Exclusive max edge -> last covered pixel; keep the outline inside the cell.
                rect = [x0 + bx0 * scale, y0 + by0 * scale,
                        x0 + min(bx1 * scale, cell_w) - 1, y0 + min(by1 * scale, cell_h) - 1]
                if rect[2] < rect[0] or rect[3] < rect[1]:  # entirely outside the cell
                    continue
                draw.rectangle(rect, outline=tuple(colours[j % len(colours)]), width=line_width)
        if captions is not None:
            draw.text((x0 + 1, y0 + cell_h), str(captions[i]), fill=(230, 230, 230), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike,
              xlabel: str = "", ylabel: str = "", title: str = "", y_range: tuple[float, float] | None = None,
              hlines: Sequence[float] = (), size: tuple[int, int] = (720, 420)) -> Path:
    """A PNG line chart (Pillow only): ``series`` maps a legend label to (xs, ys). Dashed ``hlines`` mark
    targets (e.g. 0.95 and 0.98 accuracy)."""
    w, h = size
    left, right, top, bottom = 64, 16, 44, 48
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = _font(12)
    xs_all = [x for xs, _ in series.values() for x in xs]
    ys_all = [y for _, ys in series.values() for y in ys]
    if not xs_all:
        raise InputError("line_plot needs at least one point")
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = y_range if y_range else (min(ys_all), max(ys_all))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    py = lambda y: h - bottom - (min(max(y, y0), y1) - y0) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    d.rectangle([left, top, w - right, h - bottom], outline=(120, 120, 120))
    for yv in nice_ticks(y0, y1):
        d.line([left - 4, py(yv), left, py(yv)], fill=(80, 80, 80))
        d.text((left - 8 - d.textlength(_tick(yv), font=font), py(yv) - 7), _tick(yv), fill=(0, 0, 0), font=font)
    for xv in nice_ticks(x0, x1):
        label = _tick(xv)
        d.line([px(xv), h - bottom, px(xv), h - bottom + 4], fill=(80, 80, 80))
        d.text((px(xv) - d.textlength(label, font=font) / 2, h - bottom + 8), label, fill=(0, 0, 0), font=font)
    for yv in hlines:
        for xa in range(left, w - right, 10):
            d.line([xa, py(yv), min(xa + 5, w - right), py(yv)], fill=(150, 150, 150))
    for k, (xs, ys) in enumerate(series.values()):
        colour = DEFAULT_COLOURS[k % len(DEFAULT_COLOURS)]
        pts = [(px(x), py(y)) for x, y in zip(xs, ys)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        elif pts:
            d.ellipse([pts[0][0] - 3, pts[0][1] - 3, pts[0][0] + 3, pts[0][1] + 3], fill=colour)
    # the legend: a white box with a coloured swatch and black text per series (light colours stay readable)
    if series:
        text_w = max(d.textlength(label, font=font) for label in series)
        bw, bh = text_w + 34, 6 + 14 * len(series)
        corners = [(w - right - 6 - bw, top + 6), (w - right - 6 - bw, h - bottom - 6 - bh), (left + 6, top + 6),
                   (left + 6, h - bottom - 6 - bh)]

        def covered(corner) -> int:  # how much of the curves a legend there would hide
            cx, cy = corner
            n = 0
            for xs, ys in series.values():
                pts = [(px(x), py(y)) for x, y in zip(xs, ys)]
                for (ax, ay), (bx, by) in zip(pts, pts[1:] or pts):
                    for t in range(21):
                        qx, qy = ax + (bx - ax) * t / 20, ay + (by - ay) * t / 20
                        n += cx <= qx <= cx + bw and cy <= qy <= cy + bh
            return n

        cx, cy = min(corners, key=covered)  # the first corner among the least covered
        box = [cx, cy, cx + bw, cy + bh]
        d.rectangle(box, fill="white", outline=(160, 160, 160))
        for k, label in enumerate(series):
            yk = cy + 4 + 14 * k
            d.line([box[0] + 6, yk + 6, box[0] + 24, yk + 6], fill=DEFAULT_COLOURS[k % len(DEFAULT_COLOURS)], width=3)
            d.text((box[0] + 30, yk), label, fill=(0, 0, 0), font=font)
    d.text((left, 6), title, fill=(0, 0, 0), font=font)
    d.text(((w - d.textlength(xlabel, font=font)) // 2, h - 18), xlabel, fill=(0, 0, 0), font=font)
    d.text((4, top - 16), ylabel, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round axis values in [lo, hi], about ``target`` of them, spaced 1, 2 or 5 times a power of ten."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = [round((first + k) * step, 12) for k in range(int((hi - first * step) / step + 1e-9) + 1)]
    return [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]


def _font(size: int):
    """Pillow's built-in font at ``size`` px (its default 10 px squeezes the spaces out of labels); the bitmap
    default where Pillow is too old for sizes or has no FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError, ImportError):
        return ImageFont.load_default()


def _tick(v: float) -> str:
    """An axis label: whole numbers in full (2,500 rather than 2.5e+03), others to 3 significant digits."""
    if abs(v - round(v)) < 1e-9 * max(1.0, abs(v)):
        return f"{int(round(v)):,}"
    return f"{v:.3g}"


def draw_inference(images, result, path: str | os.PathLike, true_counts: Sequence[int] | None = None,
                   scale: int = 3) -> Path:
    """What the model found: the input scenes (top row) with each inference step's window in its own
    colour, and the model's reconstructions (bottom row) with the same windows. ``result`` is an
    :class:`~attend_infer_repeat.model.InferenceResult` for ``images``."""
    grey = _as_grey_uint8(images)
    recon = _as_grey_uint8(np.clip(result.reconstruction.numpy(), 0, 1))
    # windows may reach past the image's edge: clip them to it, else one with a negative corner would be
    # taken for padding and not drawn at all
    boxes = result.step_boxes.numpy().clip(0, grey.shape[-1])
    boxes[~result.z_pres.numpy().astype(bool)] = -1  # absent steps: no window
    n = grey.shape[0]
    counts = result.counts.tolist()
    top = [f"found {c}" + (f" (true {t})" if true_counts is not None else "")
           for c, t in zip(counts, true_counts if true_counts is not None else counts)]
    return draw_scene_grid(np.concatenate([grey, recon]), np.concatenate([boxes, boxes]), path, ncols=n,
                           scale=scale, captions=top + ["reconstruction"] * n)


def draw_overlay(pixels, boxes: Sequence[tuple[int, Sequence[float]]], path: str | os.PathLike,
                 min_side: int = 240, line_width: int = 2) -> Path:
    """One image (H, W) at its own size (enlarged by an integer factor so its longer side is at least
    ``min_side`` px) with boxes ``(step, (x_min, y_min, x_max, y_max))`` in its pixels, each in the colour of
    its inference step (step 0 red, 1 green, 2 blue, ...: the colours of :data:`DEFAULT_COLOURS`) and
    labelled with the step number. Boxes may reach past the edge; they are clipped to the picture."""
    grey = _as_grey_uint8(np.asarray(pixels)[None])[0]
    h, w = grey.shape
    scale = max(1, -(-min_side // max(h, w)))
    img = Image.fromarray(grey).resize((w * scale, h * scale), Image.Resampling.NEAREST).convert("RGB")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for step, (x0, y0, x1, y1) in boxes:
        colour = tuple(DEFAULT_COLOURS[step % len(DEFAULT_COLOURS)])
        rect = [max(0, x0 * scale), max(0, y0 * scale), min(w * scale, x1 * scale) - 1,
                min(h * scale, y1 * scale) - 1]
        if rect[2] <= rect[0] or rect[3] <= rect[1]:
            continue
        d.rectangle(rect, outline=colour, width=line_width)
        d.text((rect[0] + 3, rect[1] + 2), str(step + 1), fill=colour, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def draw_image_table(rows: Sequence[Sequence[np.ndarray]], path: str | os.PathLike, scale: int = 3,
                     row_labels: Sequence[str] | None = None, column_labels: Sequence[str] | None = None,
                     borders: Sequence[Sequence[tuple[int, int, int] | None]] | None = None) -> Path:
    """A table of grey images (each (h, w) in [0, 1] or uint8; sizes may differ between columns): one row per
    sequence, columns left to right, each cell enlarged ``scale`` times and placed in a cell as large as the
    largest image of its column. Optional text labels on the left of rows and above columns, and an optional
    coloured border per cell (e.g. the inference step's colour). Used for the step-by-step decomposition,
    prior samples and latent traversals."""
    if not rows or not rows[0]:
        raise InputError("draw_image_table needs at least one image")
    ncols = max(len(r) for r in rows)
    grey_rows = [[_as_grey_uint8(np.asarray(c)[None])[0] for c in r] for r in rows]
    col_w = [max(r[j].shape[1] for r in grey_rows if j < len(r)) * scale for j in range(ncols)]
    row_h = [max(c.shape[0] for c in r) * scale for r in grey_rows]
    font = ImageFont.load_default()
    label_w = (max(len(s) for s in row_labels) * 6 + 8) if row_labels else 0
    head_h = 14 if column_labels else 0
    pad = 4
    width = label_w + pad + sum(cw + pad for cw in col_w)
    height = head_h + pad + sum(rh + pad for rh in row_h)
    img = Image.new("RGB", (width, height), (40, 40, 40))
    d = ImageDraw.Draw(img)
    xs = [label_w + pad + sum(cw + pad for cw in col_w[:j]) for j in range(ncols)]
    if column_labels:
        for j, text in enumerate(column_labels[:ncols]):
            d.text((xs[j], 2), str(text), fill=(230, 230, 230), font=font)
    y = head_h + pad
    for i, r in enumerate(grey_rows):
        if row_labels:
            d.text((4, y + row_h[i] // 2 - 6), str(row_labels[i]), fill=(230, 230, 230), font=font)
        for j, cell in enumerate(r):
            ch, cw = cell.shape
            im = Image.fromarray(cell).resize((cw * scale, ch * scale), Image.Resampling.NEAREST).convert("RGB")
            img.paste(im, (xs[j], y))
            colour = borders[i][j] if borders is not None and j < len(borders[i]) else None
            if colour is not None:
                d.rectangle([xs[j] - 1, y - 1, xs[j] + cw * scale, y + ch * scale], outline=tuple(colour), width=2)
        y += row_h[i] + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def draw_confusion(matrix, path: str | os.PathLike, cell: int = 56) -> Path:
    """A count confusion matrix (rows: true count, columns: found count) as a PNG heat map: each cell shaded
    by its share of its row (so the diagonal reads as per-count accuracy) and labelled with the number."""
    m = np.asarray(matrix, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.size == 0:
        raise InputError(f"a confusion matrix must be square and non-empty, got shape {m.shape}")
    k = m.shape[0]
    left, top = 70, 40
    img = Image.new("RGB", (left + k * cell + 10, top + k * cell + 10), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 4), "found count ->", fill=(0, 0, 0), font=font)
    d.text((2, top - 14), "true count", fill=(0, 0, 0), font=font)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    for t in range(k):
        d.text((left - 16, top + t * cell + cell // 2 - 6), str(t), fill=(0, 0, 0), font=font)
        d.text((left + t * cell + cell // 2 - 3, top - 14), str(t), fill=(0, 0, 0), font=font)
        for p in range(k):
            v = share[t, p]
            shade = (int(255 - 200 * v), int(255 - 120 * v), 255) if t == p else (255, int(255 - 200 * v),
                                                                                  int(255 - 200 * v))
            box = [left + p * cell, top + t * cell, left + (p + 1) * cell - 1, top + (t + 1) * cell - 1]
            d.rectangle(box, fill=shade, outline=(160, 160, 160))
            text = str(int(m[t, p]))
            d.text((box[0] + cell // 2 - 3 * len(text), box[1] + cell // 2 - 6), text,
                   fill=(255, 255, 255) if v > 0.6 else (0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
