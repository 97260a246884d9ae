"""Where objects go on a canvas: the layout helpers the scene generators share (multi-MNIST in ``scenes.py``, the
drawn sprites in ``sprites.py``): seeds per split, top-left corners inside the canvas, tight ink boxes and the test
of whether two objects' ink boxes overlap. Boxes are ``x_min, y_min, x_max, y_max`` with an exclusive max."""
from __future__ import annotations

import zlib

import numpy as np


def is_int(v) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def split_key(split: str) -> int:
    """A stable integer mixed into the seed so train and test scenes of one config get different layouts."""
    return zlib.crc32(split.encode("utf-8"))


def ink_box_in_patch(patches: np.ndarray) -> np.ndarray:
    """Tight ink boxes (B,4) int64 of (B,s,s) patches relative to the patch, exclusive max; -1 if no ink."""
    b, s = len(patches), patches.shape[1]
    rows, cols = patches.any(axis=2), patches.any(axis=1)  # (B,s) each: ink in row y / column x
    has = rows.any(axis=1)
    box = np.stack([cols.argmax(1), rows.argmax(1), s - cols[:, ::-1].argmax(1), s - rows[:, ::-1].argmax(1)], 1)
    box = box.astype(np.int64)
    box[~has] = -1
    return box.reshape(b, 4)


def any_overlap(ink: np.ndarray, has_ink: np.ndarray, max_iou: float = 0.0) -> np.ndarray:
    """(B,) bool: whether any two inked slots of a scene have ink boxes (B,K,4, exclusive max) whose IoU exceeds
    ``max_iou`` (with 0: whose boxes intersect; boxes that merely touch do not overlap)."""
    bad = np.zeros(len(ink), bool)
    k = ink.shape[1]
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    for j in range(k):
        for m in range(j + 1, k):
            a, b = ink[:, j], ink[:, m]
            iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
            ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
            inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
            bad |= has_ink[:, j] & has_ink[:, m] & (inter > max_iou * (area(a) + area(b) - inter))
    return bad


def draw_positions(rng: np.random.Generator, sizes: np.ndarray, canvas: int) -> np.ndarray:
    """(…,2) top-left corners (x, y), uniform over the positions that keep each frame inside the canvas."""
    high = canvas - sizes + 1
    return np.stack([rng.integers(0, high), rng.integers(0, high)], axis=-1)
