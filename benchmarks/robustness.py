"""Count accuracy on scenes built unlike the training scenes: other digit sizes, mixed sizes, digits that touch
or overlap. Scored through the public API alone (``AIR.load`` + ``infer``), on MNIST *test* digits, with scene
seeds no training run uses.

Sets (0, 1 or 2 digits per scene, equally likely, 50x50):
  * ``digits_{18,20,24,28,32}px``: every digit that size (28 px is the training size of the default);
  * ``mixed_18-32px``: each digit its own size, uniform in 18..32 px;
  * ``touching``: 28 px digits whose ink boxes intersect in every two-digit scene, with an IoU of at most 0.1
    (strokes meet or cross a little);
  * ``overlapping``: the same with an ink-box IoU between 0.1 and 0.3 (the digits cross).

usage: python benchmarks/robustness.py CHECKPOINT [CHECKPOINT ...] [--n 2000] [--refine-steps 100] [--out FILE]
(--refine-steps: also the count of AIR.infer(refine_steps=...), each count's latents refined by the ELBO)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 1234  # the scene seed of every set: training uses data_seed 0 and 1 (held out)
SIZES = (18, 20, 24, 28, 32)
OVERLAP_BANDS = {"touching": (0.0, 0.1), "overlapping": (0.1, 0.3)}


def _two_digit_iou(scenes) -> np.ndarray:
    """The ink-box IoU of the two digits of each two-digit scene (0 for the other scenes)."""
    from attend_infer_repeat.evaluate import box_iou

    out = np.zeros(len(scenes))
    for i in np.flatnonzero(scenes.counts == 2):
        b = scenes.ink_boxes[i][:2]
        out[i] = box_iou(b[:1], b[1:])[0, 0]
    return out


def overlap_scenes(n: int, low: float, high: float):
    """n scenes whose two-digit scenes all have an ink-box IoU in (low, high], with the 0- and 1-digit scenes in
    the usual shares: drawn with overlap allowed up to ``high``, the two-digit scenes below ``low`` left out."""
    from attend_infer_repeat.data import SceneConfig, make_scenes

    pool = make_scenes("test", 6 * n, SceneConfig(max_overlap=high, seed=SEED))
    iou = _two_digit_iou(pool)
    keep = np.flatnonzero((pool.counts < 2) | (iou > low))
    per_count = n // 3
    chosen = np.concatenate([keep[pool.counts[keep] == c][:per_count + (c < n % 3)] for c in (0, 1, 2)])
    if len(chosen) < n:
        raise RuntimeError(f"only {len(chosen)} scenes with an ink-box IoU in ({low}, {high}]; draw a larger pool")
    return pool.take(np.sort(chosen))


def scene_sets(n: int) -> dict:
    from attend_infer_repeat.data import SceneConfig, make_scenes

    sets = {f"digits_{s}px": make_scenes("test", n, SceneConfig(digit_size=s, seed=SEED)) for s in SIZES}
    sets["mixed_18-32px"] = make_scenes("test", n, SceneConfig(digit_size=18, max_digit_size=32, seed=SEED))
    for name, (low, high) in OVERLAP_BANDS.items():
        sets[name] = overlap_scenes(n, low, high)
    return sets


def score(model, sets: dict, refine_steps: int = 0, refine_samples: int = 0) -> dict:
    """Count accuracy on each set, overall and per true count."""
    out = {}
    for name, scenes in sets.items():
        counts = model.infer(scenes.images, refine_steps=refine_steps, refine_samples=refine_samples).counts.numpy()
        ok = counts == scenes.counts
        out[name] = {"count_acc": float(ok.mean()),
                     "per_true_count": {str(c): float(ok[scenes.counts == c].mean()) for c in (0, 1, 2)}}
    return out


def main() -> None:
    from attend_infer_repeat import AIR

    from common import record

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--n", type=int, default=2000, help="scenes per set")
    p.add_argument("--refine-steps", type=int, default=0, help="also score infer(refine_steps=this)")
    p.add_argument("--refine-samples", type=int, default=128,
                   help="importance samples per count for the refined score (0: at the refined means)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    sets = scene_sets(a.n)
    result = {"benchmark": "robustness", **record(), "scenes_per_set": a.n, "refine_steps": a.refine_steps,
              "refine_samples": a.refine_samples if a.refine_steps else None,
              "models": {}, "models_refined": {}}
    modes = [("models", 0)] + ([("models_refined", a.refine_steps)] if a.refine_steps else [])
    for ckpt in a.checkpoints:
        model = AIR.load(ckpt)
        for key, steps in modes:
            result[key][ckpt] = score(model, sets, steps, a.refine_samples)
            print(ckpt, key, json.dumps({k: round(v["count_acc"], 4) for k, v in result[key][ckpt].items()}),
                  flush=True)
            if a.out:  # after every model: a long run keeps what it has measured
                Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
