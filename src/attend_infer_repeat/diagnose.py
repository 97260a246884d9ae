"""Recognising, without labels, the bad optima AIR is known to fall into.

Public AIR implementations end in a bad optimum in about one run in five, and such a run looks like a normal one
from its loss curve. Each trap leaves a mark in what the model infers on images, with no labels needed:

* ``duplicate_objects``: two present steps explain the same object (their windows coincide, or what they draw
  does): one object is counted twice, or split in two.
* ``split_objects``: in many images two present steps draw parts that meet (their drawn boxes touch or
  intersect): objects cut in two, each half counted. Objects that really touch look the same, so this mark
  counts as a trap only when it is common (in the paper's data about 1 image in 10 shows it in a good model,
  against 2 in 3 when every object is split).
* ``blank_objects``: a present step draws almost nothing: a count one too high, the extra object empty.
* ``unexplained_ink``: much of an image's ink is not drawn by any object: objects missed, a count too low.
* ``constant_count``: nearly every image gets the same count, and it is 0 (the model explains nothing) or the
  most it can give (every step is always used).

:func:`check_traps` measures each on a set of images; ``air train`` runs it on held-out images after training
(and, to start again, early in training: see ``TrainConfig.restarts``) and reports what it finds in
``summary.json``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .model import AIR, eval_mode, ink_boxes
from .model.attention import where_to_boxes
from .model.inputs import as_float_batch

#: A present object drawing less than this fraction of the median present object's ink is "blank".
BLANK_FRACTION = 0.1
#: Two present objects of one image are "the same object" when their windows overlap by this IoU, or when this
#: fraction of the smaller one's drawn ink lies under the other's.
DUPLICATE_OVERLAP = 0.5
#: An image has "unexplained ink" when more than this fraction of its ink is above what the model drew.
UNEXPLAINED_FRACTION = 0.4
#: Images with less ink than this (in pixels at full intensity) are not scored for unexplained ink.
MIN_INK = 5.0
#: The share of images showing a mark above which it is reported as a trap.
TRAP_RATES = {"duplicate_objects": 0.02, "split_objects": 0.35, "blank_objects": 0.02, "unexplained_ink": 0.05,
              "constant_count": 0.98}

#: The traps a run may start again for early in training (``TrainConfig.restarts``). Unexplained ink is left out:
#: early in training a decoder that still draws blurry objects leaves ink unexplained too (at step 1,000 of
#: runs on 18-32 px digits that went on to count well, 6% of the images), while the over-counting marks and a
#: constant count do not go away once they appear.
RESTART_TRAPS = ("duplicate_objects", "split_objects", "blank_objects", "constant_count")
# The grid model starts again only when it explains nothing: its cells share and split digits while it learns (the
# marks of its good runs stay above the thresholds at 10 minutes), but a grid whose every cell is off by step 500
# stays off (benchmarks/results/many_objects.json: seed 2 of the 10-minute runs, 0 objects from step 250 to the end)
GRID_RESTART_TRAPS = ("constant_count",)

# The early trap check looks twice per attempt, at steps 500 and 1,000 (at a sixth and a third of budgets under 3,000
# steps), and starts the run again only for a trap found at the second look whose mark has not fallen by a quarter
# since the first: a trap stays, while a model that is still learning shows the same marks, falling (DAIR on 0, 1
# and 3 digits: duplicates in 19-35% of the images at step 500, 2-9% at 1,000 in 7 of 8 seeds; a single look at
# 1,000 restarted all 8). The looks come at fixed steps because how far a model has got depends on its steps, not
# on its budget (a trap forms within about 300 steps at the default learning rate), and they do not wait for an
# evaluation: tied to the first evaluation from a sixth of the budget on, a run of 3,000 steps evaluated every 1,000
# was never checked early, and a seed trapped from step 300 on trained to the end at 35%
# (benchmarks/results/trap_check_looks.json)
RESTART_STEP, RESTART_SHARE = 1000, 1 / 3  # the second look: at this step, or at this share of a shorter budget
TRAP_PERSISTS = 0.75  # a trap's mark at the second look, as a share of the first, from which it counts as staying


def staying_traps(report: dict, first_look: dict[str, float] | None, architecture: str = "air") -> list[dict]:
    """The traps of a trap check's ``report`` (diagnose.check_traps) that a run starts again for: those that do not
    go away by themselves (RESTART_TRAPS; GRID_RESTART_TRAPS for the grid model) and whose mark is at least
    ``TRAP_PERSISTS`` times what an earlier look saw (``first_look``, its rates; None: no earlier look, every such
    trap counts)."""
    before = first_look or {}
    names = GRID_RESTART_TRAPS if architecture == "grid" else RESTART_TRAPS
    return [trap for trap in report["traps"] if trap["name"] in names
            and report["rates"][trap["name"]] >= TRAP_PERSISTS * before.get(trap["name"], 0.0)]


def early_look_steps(steps: int) -> tuple[int, ...]:
    """The steps of a run's two early looks (500 and 1,000; a sixth and a third of a shorter budget; none for a
    budget too short to hold two)."""
    second = min(RESTART_STEP, math.ceil(RESTART_SHARE * steps))
    first = math.ceil(second / 2)
    return (first, second) if 1 <= first < second else ()


ADVICE = {
    "duplicate_objects": "two present steps explain one object (it is counted twice, or split in two)",
    "split_objects": "two present steps draw parts that meet (objects cut in two and counted twice, unless "
                     "the objects in these images do touch)",
    "blank_objects": "present steps draw almost nothing (counts come out one too high)",
    "unexplained_ink": "much of the ink is left unexplained (objects missed, counts too low)",
    "constant_count": "nearly every image gets the same count",
}


@dataclass
class Trap:
    name: str  # one of ADVICE's keys
    rate: float  # share of the images that show it
    threshold: float  # the share above which it counts as a trap
    message: str  # one line: what was seen and what to do

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def object_marks(model: AIR, images, batch_size: int = 500) -> dict[str, np.ndarray]:
    """Per image (deterministic inference): its count, whether two present objects coincide, whether two
    present objects' drawn boxes meet, the drawn ink of each step (B, N; 0 where absent), and the share of its
    ink that nothing drew (NaN for near-empty images)."""
    cfg = model.config
    x_all = as_float_batch(torch.as_tensor(images))
    dev = next(model.parameters()).device
    counts, duplicate, split, ink, unexplained = [], [], [], [], []
    with eval_mode(model):
        for i in range(0, x_all.size(0), batch_size):
            x = x_all[i:i + batch_size].to(dev)
            q = model.guide(x, deterministic=True)
            objects, _ = model.draw(q.z_what, q.z_where)  # (B, N, 1, H, W)
            objects = (objects * q.z_pres[:, :, None, None, None]).float()
            canvas = q.canvas if cfg.dair else model.compose(objects)
            drawn = objects.flatten(2).sum(-1)  # (B, N)
            image_ink = x.flatten(1).sum(-1)
            left = (x - canvas).clamp_min(0).flatten(1).sum(-1)
            frac = torch.where(image_ink >= MIN_INK, left / image_ink.clamp_min(1e-6),
                               torch.full_like(image_ink, float("nan")))
            boxes = where_to_boxes(q.z_where, cfg.image_size, cfg.min_zoom).cpu().numpy()
            drawn_boxes = ink_boxes(objects[:, :, 0], q.z_where, cfg).cpu().numpy()
            present = q.z_pres.bool().cpu().numpy()
            flat = objects.flatten(2)
            dup = np.zeros(x.size(0), bool)
            meet = np.zeros(x.size(0), bool)
            for a in range(cfg.max_steps):
                for b in range(a + 1, cfg.max_steps):
                    both = present[:, a] & present[:, b]
                    if not both.any():
                        continue
                    iou = _pair_iou(boxes[:, a], boxes[:, b])
                    shared = torch.minimum(flat[:, a], flat[:, b]).sum(-1)
                    smaller = torch.minimum(drawn[:, a], drawn[:, b]).clamp_min(1e-6)
                    same_ink = (shared / smaller).cpu().numpy() >= DUPLICATE_OVERLAP
                    dup |= both & ((iou >= DUPLICATE_OVERLAP) | same_ink)
                    meet |= both & (_gap(drawn_boxes[:, a], drawn_boxes[:, b]) <= 0)
            counts.append(q.z_pres.sum(1).long().cpu().numpy())
            duplicate.append(dup)
            split.append(meet)
            ink.append(drawn.cpu().numpy())
            unexplained.append(frac.cpu().numpy())
    cat = lambda parts, empty: np.concatenate(parts) if parts else empty  # noqa: E731
    return {"counts": cat(counts, np.zeros(0, np.int64)), "duplicate": cat(duplicate, np.zeros(0, bool)),
            "split": cat(split, np.zeros(0, bool)),
            "ink": cat(ink, np.zeros((0, cfg.max_steps))), "unexplained": cat(unexplained, np.zeros(0))}


def check_traps(model: AIR, images, batch_size: int = 500) -> dict:
    """Look for the known traps in what ``model`` infers on ``images`` (no labels needed).

    Returns ``{"traps": [Trap as dict, ...], "rates": {name: share of images}, "images": n}``: an empty list
    means none of the marks is above its threshold (``TRAP_RATES``)."""
    marks = object_marks(model, images, batch_size)
    n = len(marks["counts"])
    n_steps = model.config.max_steps
    if n == 0:
        return {"traps": [], "rates": {}, "images": 0}
    ink = marks["ink"]
    present = marks["counts"][:, None] > np.arange(n_steps)[None]
    typical = float(np.median(ink[present])) if present.any() else 0.0
    blank = present & (ink < BLANK_FRACTION * typical)
    scored = ~np.isnan(marks["unexplained"])
    hist = np.bincount(marks["counts"], minlength=n_steps + 1)
    top = int(hist.argmax())
    rates = {"duplicate_objects": float(marks["duplicate"].mean()),
             "split_objects": float(marks["split"].mean()),
             "blank_objects": float(blank.any(1).mean()),
             "unexplained_ink": float((marks["unexplained"][scored] > UNEXPLAINED_FRACTION).sum()
                                      / max(scored.sum(), 1)),
             "constant_count": float(hist[top] / n)}
    traps = []
    for name, rate in rates.items():
        if rate <= TRAP_RATES[name]:
            continue
        if name == "constant_count":
            inked = scored.mean() > 0.5
            if not ((top == 0 and inked) or top == n_steps):
                continue  # one count for all images can be right (a data set of single objects)
            seen = f"{rate:.0%} of the images are counted as {top}" + (
                " although they hold ink: the model explains nothing" if top == 0 else
                f", the most its {n_steps} steps allow (every step always says 'present')")
        else:
            seen = f"in {rate:.1%} of the images {ADVICE[name]}"
        traps.append(Trap(name, rate, TRAP_RATES[name], f"{seen}; {_what_to_do(name, top, n_steps, model.config)}"))
    return {"traps": [t.to_dict() for t in traps], "rates": rates, "images": n,
            "count_histogram": hist.tolist(), "median_object_ink": typical}


def _gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The gap in pixels between boxes a[i] and b[i] (B, 4) along the axis where they are furthest apart:
    negative where they intersect, 0 where they touch."""
    gx = np.maximum(a[:, 0], b[:, 0]) - np.minimum(a[:, 2], b[:, 2])
    gy = np.maximum(a[:, 1], b[:, 1]) - np.minimum(a[:, 3], b[:, 3])
    return np.maximum(gx, gy)


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a[i] and b[i] (B, 4) -> (B,)."""
    iw = (np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])).clip(0)
    ih = (np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])).clip(0)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _what_to_do(name: str, top: int, n_steps: int, cfg) -> str:
    """The advice for a trap, for the model at hand: --dair only where it is not on already (and not for the
    grid model, which has no steps), --grid-size rather than --max-steps for the grid model."""
    if name == "unexplained_ink" or (name == "constant_count" and top == n_steps):
        more = "raise --grid-size" if cfg.architecture == "grid" else "raise --max-steps"
        return f"if images can hold more than {n_steps} objects, {more}; otherwise train again with another --seed"
    if name == "constant_count":
        return "train again with another --seed (a lower --lr helps if it happens again)"
    dair = "" if cfg.dair or cfg.architecture == "grid" else " (or with --dair, which sees what is left to explain)"
    if name == "split_objects":
        return f"if the objects in these images do not touch, train again with another --seed{dair}"
    return f"train again with another --seed{dair}"
