"""Procedural sprites: grey canvases with a few simple shapes (squares, triangles, circles) of random size,
position and brightness, drawn on the fly with their ground truth, in the same :class:`~.scene.Scenes` format as
multi-MNIST (so ``air train``, ``air eval`` and the report work on them unchanged).

Each shape fills a ``size x size`` frame: a square fills it; a circle is the disc inscribed in it; a triangle
has its base on the frame's bottom edge and its apex at the middle of the top edge. A pixel belongs to a shape
when its centre lies inside (no antialiasing, so the ink box is exact). Every shape gets its own intensity,
drawn uniformly from ``INTENSITY`` (as uint8 0..255); where shapes overlap (only with ``allow_overlap``) the
brighter one wins. By default shapes do not overlap: their frames are disjoint.

Per shape slot the scene records the frame (``boxes``), the tight box of its pixels (``ink_boxes``) and its
class (``labels``: 0 square, 1 triangle, 2 circle). Sizes are drawn uniformly from ``config.sizes``
(``digit_size``..``max_digit_size``), counts uniformly from ``config.counts``. Generation is vectorised over
scenes (Python loops only over slots and chunks of scenes) and deterministic for ``(config.seed, split)``.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .layout import any_overlap, draw_positions, ink_box_in_patch, split_key

#: The shape classes, by label.
SHAPES = ("square", "triangle", "circle")
#: Range of a shape's brightness (fraction of white), drawn uniformly per shape.
INTENSITY = (0.4, 1.0)
#: Scenes rasterised at once (bounds the memory of the (chunk, canvas, canvas) masks).
CHUNK = 2048
#: Rounds of redrawing the positions of scenes whose shapes overlap before giving up.
MAX_ROUNDS = 1000


def shape_masks(kind: np.ndarray, x: np.ndarray, y: np.ndarray, size: np.ndarray, canvas: int) -> np.ndarray:
    """(B, canvas, canvas) bool masks of B shapes: ``kind`` (B,) in 0..2, frame top-left ``(x, y)`` and side
    ``size`` (B,) in pixels. A pixel is inside when its centre is."""
    c = np.arange(canvas, dtype=np.float32) + 0.5  # pixel centres
    px = c[None, None, :] - x[:, None, None].astype(np.float32)  # (B,1,W): centre relative to the frame
    py = c[None, :, None] - y[:, None, None].astype(np.float32)  # (B,H,1)
    s = size[:, None, None].astype(np.float32)
    inside = (px >= 0) & (px < s) & (py >= 0) & (py < s)
    half = s / 2
    circle = (px - half) ** 2 + (py - half) ** 2 <= half ** 2
    # half-width grows linearly down the frame, from half a pixel in the top row to size/2 in the bottom one,
    # so the triangle touches all four sides of its frame
    triangle = np.abs(px - half) <= (py + 0.5) / 2
    k = kind[:, None, None]
    return inside & np.where(k == 0, True, np.where(k == 1, triangle, circle))


def draw_sprites(n: int, config, split: str = "train") -> dict:
    """The arrays of ``n`` sprite scenes drawn with ``config`` (a checked :class:`~.scene.SceneConfig`; its
    ``digit_size`` .. ``max_digit_size`` are the shape sizes); :func:`~.scenes.generate_sprites` wraps them."""
    n, k, canvas = int(n), config.max_count, config.canvas_size
    rng = np.random.default_rng([config.seed, split_key(split), 2])
    counts = rng.choice(np.asarray(config.counts, dtype=np.int64), size=n)
    active = np.arange(k)[None, :] < counts[:, None]
    kind = rng.integers(0, len(SHAPES), size=(n, k))
    sizes = rng.integers(config.sizes.start, config.sizes.stop, size=(n, k))
    level = np.rint(255 * rng.uniform(*INTENSITY, size=(n, k))).astype(np.uint8)

    pos = draw_positions(rng, sizes, canvas)
    if not config.allow_overlap and k >= 2:
        todo = np.flatnonzero(counts >= 2)
        for _ in range(MAX_ROUNDS):
            frames = np.concatenate([pos[todo], pos[todo] + sizes[todo, :, None]], axis=-1)
            todo = todo[any_overlap(frames, active[todo])]
            if len(todo) == 0:
                break
            pos[todo] = draw_positions(rng, sizes[todo], canvas)
        else:
            raise InputError(f"{len(todo)} of {n} sprite scenes could not be placed without overlapping shapes "
                             f"in {MAX_ROUNDS} rounds; use smaller shapes, fewer of them or allow_overlap=True")

    images = np.zeros((n, canvas, canvas), np.uint8)
    ink = np.full((n, k, 4), -1, np.int64)
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(start + CHUNK, n))
        for j in range(k):
            on = rows[active[rows, j]]
            if len(on) == 0:
                continue
            m = shape_masks(kind[on, j], pos[on, j, 0], pos[on, j, 1], sizes[on, j], canvas)
            images[on] = np.maximum(images[on], np.where(m, level[on, j, None, None], np.uint8(0)))
            ink[on, j] = ink_box_in_patch(m)  # the tight box of the shape's pixels on the canvas
    frames = np.concatenate([pos, pos + sizes[..., None]], axis=-1).astype(np.float32)
    pad = ~active[..., None]
    return dict(images=images, counts=counts.astype(np.int64), boxes=np.where(pad, np.float32(-1), frames),
                ink_boxes=np.where(pad, np.float32(-1), ink.astype(np.float32)),
                labels=np.where(active, kind, -1).astype(np.int64))
