"""Pictures for people: grids of scenes with boxes drawn on them (ground truth now, predictions later).

Everything writes plain PNG files with Pillow, so it works on a headless machine without matplotlib.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError

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
    keep = np.isfinite(b).all(axis=1) & (b >= 0).all(axis=1)
    return [(int(j), b[j]) for j in np.flatnonzero(keep)]


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
    left, right, top, bottom = 64, 16, 34, 48
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
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
    for i in range(6):
        yv = y0 + i * (y1 - y0) / 5
        d.line([left - 4, py(yv), left, py(yv)], fill=(80, 80, 80))
        d.text((4, py(yv) - 6), f"{yv:.3g}", fill=(0, 0, 0), font=font)
        xv = x0 + i * (x1 - x0) / 5
        d.line([px(xv), h - bottom, px(xv), h - bottom + 4], fill=(80, 80, 80))
        d.text((px(xv) - 10, h - bottom + 8), f"{xv:.3g}", fill=(0, 0, 0), font=font)
    for yv in hlines:
        for xa in range(left, w - right, 10):
            d.line([xa, py(yv), min(xa + 5, w - right), py(yv)], fill=(150, 150, 150))
    for k, (label, (xs, ys)) in enumerate(series.items()):
        colour = DEFAULT_COLOURS[k % len(DEFAULT_COLOURS)]
        pts = [(px(x), py(y)) for x, y in zip(xs, ys)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.text((left + 8, top + 6 + 14 * k), label, fill=colour, font=font)
    d.text((left, 10), title, fill=(0, 0, 0), font=font)
    d.text(((w - len(xlabel) * 6) // 2, h - 18), xlabel, fill=(0, 0, 0), font=font)
    d.text((4, top - 16), ylabel, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def draw_inference(images, result, path: str | os.PathLike, true_counts: Sequence[int] | None = None,
                   scale: int = 3) -> Path:
    """What the model found: the input scenes (top row) with each inference step's window in its own
    colour, and the model's reconstructions (bottom row) with the same windows. ``result`` is an
    :class:`~attend_infer_repeat.model.InferenceResult` for ``images``."""
    grey = _as_grey_uint8(images)
    recon = _as_grey_uint8(np.clip(result.reconstruction.numpy(), 0, 1))
    boxes = result.step_boxes.numpy().copy()
    boxes[~result.z_pres.numpy().astype(bool)] = -1  # absent steps: no window
    n = grey.shape[0]
    counts = result.counts.tolist()
    top = [f"found {c}" + (f" (true {t})" if true_counts is not None else "")
           for c, t in zip(counts, true_counts if true_counts is not None else counts)]
    return draw_scene_grid(np.concatenate([grey, recon]), np.concatenate([boxes, boxes]), path, ncols=n,
                           scale=scale, captions=top + ["reconstruction"] * n)
