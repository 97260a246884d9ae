"""Scenes of objects cut from an image set (MNIST digits, Fashion-MNIST items): digits of one or several sizes
placed at random, their ink kept apart (or allowed to overlap up to an IoU), pixels combined with ``max``.
``config`` is a :class:`~.scene.SceneConfig`; :func:`~.scenes.generate_scenes` checks it and wraps the arrays.

Generation is vectorised over scenes: Python loops run only over digit slots and distinct digit sizes, so
60k scenes take a few seconds.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from .layout import any_overlap, draw_positions, ink_box_in_patch, is_int, overlaps_earlier, split_key

log = logging.getLogger(__name__)

#: Rejection sampling bound: rounds of redrawing the positions of the scenes whose digits overlap.
MAX_ROUNDS = 10_000
#: After this many rounds without a valid placement, a scene's digits (not only their positions) are redrawn:
#: a rare combination of wide digits may have no valid placement at all, and redrawing them earlier would bias
#: the digit classes towards thin ones.
ROUNDS_PER_DIGIT_DRAW = 500
#: Trial scenes used to estimate, before sampling, how often a random placement is valid.
PILOT_SCENES = 2048
#: Smallest acceptable fraction of valid random placements: below it the request is refused at once.
MIN_ACCEPTANCE = 0.01


@functools.lru_cache(maxsize=None)
def _resize_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) float32 matrix ``R`` with ``R @ v`` = ``v`` resized from ``src`` to ``dst`` samples by Pillow's
    antialiased bilinear filter (a triangle filter widened by the scale factor when shrinking, so thin strokes
    are averaged rather than skipped). The filter is separable, so an image resizes as ``R @ img @ R.T``."""
    eye = np.eye(src, dtype=np.float32)  # row i = unit impulse at i; resizing the rows gives column i of R
    return np.asarray(Image.fromarray(eye).resize((dst, src), Image.Resampling.BILINEAR)).T.copy()


def _resize(patches: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 (B,h,h) digits to (B,size,size) with antialiased bilinear interpolation (no-op if same).

    Done as two batched matrix products in numpy rather than per-image Pillow calls (a Python loop over
    digits) or torch (whose thread pool stalls on small ops when the cores are busy, e.g. beside a trainer)."""
    if patches.shape[1:] == (size, size):
        return patches
    r = _resize_matrix(patches.shape[1], size)
    out = np.matmul(np.matmul(r, patches.astype(np.float32)), r.T)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _slot_patches(digits: np.ndarray, idx: np.ndarray, sizes: np.ndarray, active: np.ndarray):
    """Yield ``(rows, slot, size, patches)`` for every slot and distinct size among the active slots: the
    loop the generator keeps in Python (slots x sizes), everything inside is vectorised over scenes."""
    for j in range(idx.shape[1]):
        on = active[:, j]
        for s in np.unique(sizes[on, j]):
            rows = np.flatnonzero(on & (sizes[:, j] == s))
            yield rows, j, int(s), _resize(digits[idx[rows, j]], int(s))


def _ink_boxes_rel(digits, idx, sizes, active) -> np.ndarray:
    """(B,K,4) ink boxes relative to each slot's frame (-1 for inactive slots and inkless digits)."""
    rel = np.full(idx.shape + (4,), -1, np.int64)
    for rows, j, _, patches in _slot_patches(digits, idx, sizes, active):
        rel[rows, j] = ink_box_in_patch(patches)
    return rel


def _draw_digits(rng: np.random.Generator, shape: tuple[int, ...], n_digits: int, config):
    """Digit indices and sizes for ``shape`` slots."""
    idx = rng.integers(0, n_digits, size=shape)
    sizes = rng.integers(config.digit_size, config.sizes.stop, size=shape)
    return idx, sizes


def _placement_acceptance(digits, config, k: int, rng: np.random.Generator) -> float:
    """Fraction of random placements of ``k`` random digits whose ink boxes are pairwise disjoint."""
    idx, sizes = _draw_digits(rng, (PILOT_SCENES, k), len(digits), config)
    active = np.ones((PILOT_SCENES, k), bool)
    rel = _ink_boxes_rel(digits, idx, sizes, active)
    pos = draw_positions(rng, sizes, config.canvas_size)
    ink = rel + np.concatenate([pos, pos], axis=-1)
    return float(1.0 - any_overlap(ink, rel[..., 0] >= 0, config.max_overlap).mean())


def _place_sequentially(rng, digits, config, idx, sizes, rel, active, pos) -> None:
    """``placement="sequential"``: the digits of a scene are placed one after another, each position redrawn
    until its ink overlaps none of those placed before (a digit that finds no place in ``ROUNDS_PER_DIGIT_DRAW``
    rounds is swapped for another one). Unlike the joint placement this stays feasible for many digits, where
    almost no joint draw keeps every pair apart; layouts are not uniform over the valid ones (early digits are
    placed freely, late ones go where room is left). Edits ``idx``, ``sizes``, ``rel`` and ``pos`` in place."""
    canvas = config.canvas_size
    for m in range(1, idx.shape[1]):
        todo = np.flatnonzero(active[:, m])
        for round_ in range(1, MAX_ROUNDS + 1):
            ink = rel[todo, :m + 1] + np.concatenate([pos[todo, :m + 1], pos[todo, :m + 1]], axis=-1)
            todo = todo[overlaps_earlier(ink, rel[todo, :m + 1, 0] >= 0, m, config.max_overlap)]
            if len(todo) == 0:
                break
            if round_ % ROUNDS_PER_DIGIT_DRAW == 0:
                new_idx, new_sizes = _draw_digits(rng, (len(todo), 1), len(digits), config)
                idx[todo, m], sizes[todo, m] = new_idx[:, 0], new_sizes[:, 0]
                rel[todo, m] = _ink_boxes_rel(digits, new_idx, new_sizes, np.ones((len(todo), 1), bool))[:, 0]
            pos[todo, m] = draw_positions(rng, sizes[todo, m], canvas)
        else:
            raise InputError(
                f"{len(todo)} of {len(idx)} scenes found no place for digit {m + 1} apart from the others in "
                f"{MAX_ROUNDS} rounds; use a larger canvas_size, a smaller digit_size, fewer digits (counts) or a "
                "larger max_overlap")


def _check_inputs(digits: Any, labels: Any, n: Any) -> tuple[np.ndarray, np.ndarray, int]:
    if not isinstance(digits, np.ndarray) or digits.dtype != np.uint8 or digits.ndim != 3:
        got = f"{digits.shape} {digits.dtype}" if isinstance(digits, np.ndarray) else type(digits).__name__
        raise InputError(f"digits must be a uint8 array (M, h, w), got {got}")
    if digits.shape[1] != digits.shape[2] or digits.shape[1] < 1:
        raise InputError(f"digits must be square, got {digits.shape[1]}x{digits.shape[2]}")
    labels = np.asarray(labels)
    if labels.shape != (len(digits),) or labels.dtype.kind not in "iu":
        raise InputError(f"labels must be {len(digits)} integers (one per digit), got {labels.shape} {labels.dtype}")
    if not is_int(n) or n < 0:
        raise InputError(f"n (number of scenes) must be a non-negative integer, got {n!r}")
    return np.ascontiguousarray(digits), labels.astype(np.int64), int(n)


def draw_from_items(digits: np.ndarray, labels: np.ndarray, n: int, config, split: str = "train") -> dict:
    """The arrays of ``n`` scenes drawn from ``digits`` (uint8 (M,h,w)) and their ``labels`` (M,) with a checked
    ``config``: see :func:`~.scenes.generate_scenes`."""
    digits, labels, n = _check_inputs(digits, labels, n)
    k, canvas = config.max_count, config.canvas_size
    if n > 0 and k > 0 and len(digits) == 0:
        raise InputError("no digits to draw from")

    key = split_key(split)
    if not config.allow_overlap and n > 0 and config.placement == "joint":
        pilot_rng = np.random.default_rng([config.seed, key, 1])  # own stream: the scenes don't depend on it
        for c in sorted(x for x in config.counts if x >= 2):
            acc = _placement_acceptance(digits, config, c, pilot_rng)
            if acc < MIN_ACCEPTANCE:
                sizes = (f"{config.digit_size}" if config.max_digit_size is None
                         else f"{config.digit_size}..{config.max_digit_size}")
                raise InputError(
                    f"cannot place {c} non-overlapping digits of size {sizes} on a {canvas}x{canvas} canvas: only "
                    f"{acc:.2%} of {PILOT_SCENES} random placements keep their ink apart (at least "
                    f"{MIN_ACCEPTANCE:.0%} needed); use a larger canvas_size, a smaller digit_size, fewer digits "
                    "(counts) or allow_overlap=True")

    rng = np.random.default_rng([config.seed, key])
    counts = rng.choice(np.asarray(config.counts, dtype=np.int64), size=n)
    active = np.arange(k)[None, :] < counts[:, None]
    idx, sizes = _draw_digits(rng, (n, k), len(digits), config)
    pos = draw_positions(rng, sizes, canvas)

    rel = _ink_boxes_rel(digits, idx, sizes, active)
    if not config.allow_overlap and k >= 2 and config.placement == "sequential":
        _place_sequentially(rng, digits, config, idx, sizes, rel, active, pos)
    elif not config.allow_overlap and k >= 2:
        todo = np.flatnonzero(counts >= 2)
        for round_ in range(1, MAX_ROUNDS + 1):
            ink = rel[todo] + np.concatenate([pos[todo], pos[todo]], axis=-1)
            todo = todo[any_overlap(ink, rel[todo, :, 0] >= 0, config.max_overlap)]
            if len(todo) == 0:
                break
            if round_ % ROUNDS_PER_DIGIT_DRAW == 0:  # hopeless digit combinations: draw other digits
                idx[todo], sizes[todo] = _draw_digits(rng, (len(todo), k), len(digits), config)
                rel[todo] = _ink_boxes_rel(digits, idx[todo], sizes[todo], active[todo])
            pos[todo] = draw_positions(rng, sizes[todo], canvas)
        else:
            raise InputError(
                f"{len(todo)} of {n} scenes could not be placed without overlapping digits in {MAX_ROUNDS} "
                "rounds; use a larger canvas_size, a smaller digit_size, fewer digits (counts) or allow_overlap=True")
        log.debug("placement done after %d rounds", round_)

    images = np.zeros((n, canvas, canvas), np.uint8)
    for rows, j, s, patches in _slot_patches(digits, idx, sizes, active):
        x, y = pos[rows, j, 0], pos[rows, j, 1]
        r = np.arange(s)
        ii = rows[:, None, None]
        yy = y[:, None, None] + r[None, :, None]
        xx = x[:, None, None] + r[None, None, :]
        images[ii, yy, xx] = np.maximum(images[ii, yy, xx], patches)

    frames = np.concatenate([pos, pos + sizes[..., None]], axis=-1).clip(0, canvas).astype(np.float32)
    ink_abs = (rel + np.concatenate([pos, pos], axis=-1)).astype(np.float32)
    pad = ~active[..., None]
    boxes = np.where(pad, np.float32(-1), frames)
    ink_boxes = np.where(pad | (rel[..., :1] < 0), np.float32(-1), ink_abs)
    slot_labels = np.where(active, labels[idx], -1).astype(np.int64)
    return dict(images=images, counts=counts.astype(np.int64), boxes=boxes, ink_boxes=ink_boxes, labels=slot_labels)
