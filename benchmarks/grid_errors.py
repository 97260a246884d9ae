"""Where a grid model (``air train --model grid``) goes wrong on held-out many-MNIST scenes, digit by digit.

Each true digit (its ink box) is matched one-to-one to the found objects' drawn boxes (Hungarian on IoU, a hit
at IoU >= 0.5, as AP50 counts them). A digit without a hit is put in one class by its *owner*, the cell its ink
box's centre lies in (the cell whose object the generative model would centre on it):

- ``owner_on_box_off``: the owner is present but what it draws does not match the digit (``merged`` among
  them: the owner's drawn box covers half or more of another digit's ink box too);
- ``owner_off_window_on``: the owner is off although its window lies on the digit (IoU > 0.3);
- ``owner_off_window_off``: the owner is off and its window is elsewhere;
- ``covered_by_other``: (a subset of the two ``owner_off`` classes) another present object's drawn box covers
  half or more of the digit's ink box.

Found objects without a hit are ``extra``: ``blank`` (draws no ink), ``merged`` (covers half or more of two
digits), ``on_found_digit`` (IoU > 0.3 with a digit another object already matched: a split or a duplicate), or
``other``. Everything through the public API (``AIR.load``, ``infer``).

usage: python benchmarks/grid_errors.py RUN_OR_CHECKPOINT [--n 300] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import record  # noqa: E402


def covered(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The fraction of each box b (T, 4) that each box a (P, 4) covers: (P, T)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    area = np.clip(b[:, 2] - b[:, 0], 1e-9, None) * np.clip(b[:, 3] - b[:, 1], 1e-9, None)
    return np.clip(iw, 0, None) * np.clip(ih, 0, None) / area[None, :]


def breakdown(model, scenes) -> dict:
    """The classes of the module docstring, counted over ``scenes``, and the owners' presence q of the digits
    whose owner is off."""
    from attend_infer_repeat.evaluate import box_iou, match_boxes

    cfg = model.config
    g, cell = cfg.grid_size, cfg.image_size / cfg.grid_size
    r = model.infer(scenes.images)
    digits = {k: 0 for k in ("digits", "found", "owner_on_box_off", "merged", "owner_off_window_on",
                             "owner_off_window_off", "covered_by_other")}
    extras = {k: 0 for k in ("objects", "extra", "blank", "merged", "on_found_digit", "other")}
    owner_q = []
    for i in range(len(scenes.images)):
        true = scenes.ink_boxes[i][: scenes.counts[i]].astype(np.float64)
        pred = r.object_boxes[i].numpy().astype(np.float64)
        cells = torch.nonzero(r.z_pres[i]).flatten().numpy()  # the present cells, in the order of pred
        hits = [(p, t) for p, t, iou in match_boxes(pred, true) if iou >= 0.5]
        hit_true, hit_pred = {t for _, t in hits}, {p for p, _ in hits}
        cover = covered(pred, true) if len(pred) and len(true) else np.zeros((len(pred), len(true)))
        digits["digits"] += len(true)
        digits["found"] += len(hit_true)
        extras["objects"] += len(pred)
        for t in set(range(len(true))) - hit_true:
            cx, cy = (true[t, 0] + true[t, 2]) / 2, (true[t, 1] + true[t, 3]) / 2
            owner = int(min(cy // cell, g - 1) * g + min(cx // cell, g - 1))
            if owner in set(cells.tolist()):
                digits["owner_on_box_off"] += 1
                p = int(np.flatnonzero(cells == owner)[0])
                digits["merged"] += int((cover[p] >= 0.5).sum() >= 2)
                continue
            window = r.step_boxes[i, owner].numpy()[None].astype(np.float64)
            on = box_iou(window, true[t:t + 1])[0, 0] > 0.3
            digits["owner_off_window_on" if on else "owner_off_window_off"] += 1
            digits["covered_by_other"] += int(len(pred) > 0 and cover[:, t].max() >= 0.5)
            owner_q.append(float(r.pres_probs[i, owner]))
        found_iou = box_iou(pred, true[sorted(hit_true)]) if hit_true else np.zeros((len(pred), 0))
        for p in set(range(len(pred))) - hit_pred:
            extras["extra"] += 1
            box = pred[p]
            if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
                extras["blank"] += 1
            elif (cover[p] >= 0.5).sum() >= 2:
                extras["merged"] += 1
            elif found_iou.shape[1] and found_iou[p].max() > 0.3:
                extras["on_found_digit"] += 1
            else:
                extras["other"] += 1
    pred_n, true_n = r.counts.numpy(), np.asarray(scenes.counts)
    q = np.asarray(owner_q)
    return {"count_acc": float((pred_n == true_n).mean()), "count_bias": float((pred_n - true_n).mean()),
            "digits": digits, "extra_objects": extras,
            "owner_off_q": {"median": float(np.median(q)) if q.size else None,
                            "below_0.01": float((q < 0.01).mean()) if q.size else None,
                            "below_0.1": float((q < 0.1).mean()) if q.size else None}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory (its last.pt) or a checkpoint of a grid model")
    p.add_argument("--n", type=int, default=300, help="held-out mnist-many scenes (MNIST test digits, seed 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the JSON here too")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from attend_infer_repeat import AIR
    from attend_infer_repeat.data import SceneConfig, load_or_make_scenes

    path = Path(a.run)
    model = AIR.load(path / "last.pt" if path.is_dir() else path)
    if model.config.architecture != "grid":
        raise SystemExit(f"{a.run} holds a {model.config.architecture!r} model; this breakdown is for --model grid")
    scenes = load_or_make_scenes("test", a.n, SceneConfig(dataset="mnist-many", seed=1))
    result = {**record(), "benchmark": "grid_errors", "checkpoint": str(a.run), "n": a.n,
              **breakdown(model, scenes)}
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
