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


def _too_close(a: np.ndarray, b: np.ndarray, max_iou: float) -> np.ndarray:
    """(B,) bool: whether boxes ``a`` and ``b`` (B,4, exclusive max) have an IoU over ``max_iou`` (with 0: whether
    they intersect; boxes that merely touch do not)."""
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    return inter > max_iou * (area(a) + area(b) - inter)


def any_overlap(ink: np.ndarray, has_ink: np.ndarray, max_iou: float = 0.0) -> np.ndarray:
    """(B,) bool: whether any two inked slots of a scene have ink boxes (B,K,4, exclusive max) whose IoU exceeds
    ``max_iou`` (with 0: whose boxes intersect; boxes that merely touch do not overlap)."""
    bad = np.zeros(len(ink), bool)
    for m in range(1, ink.shape[1]):
        bad |= overlaps_earlier(ink, has_ink, m, max_iou)
    return bad


def overlaps_earlier(ink: np.ndarray, has_ink: np.ndarray, m: int, max_iou: float = 0.0) -> np.ndarray:
    """(B,) bool: whether slot ``m``'s ink box overlaps (as :func:`any_overlap` counts it) that of a slot before
    it."""
    bad = np.zeros(len(ink), bool)
    for j in range(m):
        bad |= has_ink[:, j] & has_ink[:, m] & _too_close(ink[:, j], ink[:, m], max_iou)
    return bad


def draw_positions(rng: np.random.Generator, sizes: np.ndarray, canvas: int) -> np.ndarray:
    """(…,2) top-left corners (x, y), uniform over the positions that keep each frame inside the canvas."""
    high = canvas - sizes + 1
    return np.stack([rng.integers(0, high), rng.integers(0, high)], axis=-1)
