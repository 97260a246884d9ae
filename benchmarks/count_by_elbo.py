"""Does a model over-count because its guide misjudges the count, or because its own ELBO prefers the extra
object? For each scene, the guide is run with every step present (deterministic latents); each count n is scored
by log p(x | z_1..n) - sum_{i<=n} KL(z_where_i, z_what_i) + log p(n), and the best-scoring count is compared with
the count the guide's presence gives. Where the best-scoring count is as wrong as the guide's, the model itself
prefers the wrong count.

usage: python benchmarks/count_by_elbo.py CHECKPOINT --digit-size 20 --counts 2,3,4 [--n 500] [--out FILE]
       python benchmarks/count_by_elbo.py CHECKPOINT --robustness-set overlapping [--n 600]
       (one of robustness.py's sets, its n scenes split by their true count)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    from attend_infer_repeat import AIR
    from attend_infer_repeat.data import SceneConfig, make_scenes
    from attend_infer_repeat.evaluate import as_float_batch
    from attend_infer_repeat.model import eval_mode
    from attend_infer_repeat.model.refine import refine_counts

    from common import record

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--digit-size", type=int, default=28)
    p.add_argument("--counts", default="0,1,2")
    p.add_argument("--n", type=int, default=500, help="scenes per count")
    p.add_argument("--seed", type=int, default=777, help="scene seed (training uses 0-2)")
    p.add_argument("--robustness-set", default=None, help="score a set of robustness.py instead, e.g. overlapping")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    model = AIR.load(a.checkpoint)
    result = {"benchmark": "count_by_elbo", **record(), "checkpoint": a.checkpoint, "digit_size": a.digit_size,
              "scenes_per_count": a.n, "scene_seed": a.seed, "counts": {}}
    if a.robustness_set:
        from robustness import scene_sets

        every = scene_sets(a.n)[a.robustness_set]
        result.update(robustness_set=a.robustness_set, scenes_in_set=a.n, scenes_per_count=None, digit_size=None,
                      scene_seed=None)
    for count in (int(c) for c in a.counts.split(",")):
        if a.robustness_set:
            scenes = every.take(np.flatnonzero(every.counts == count))
        else:
            scenes = make_scenes("test", a.n, SceneConfig(digit_size=a.digit_size, counts=(count,), seed=a.seed))
        with eval_mode(model), torch.no_grad():  # the ELBO term of each count, unrefined (model/refine.py)
            x = as_float_batch(torch.as_tensor(scenes.images))
            best = refine_counts(model, x, steps=0).scores.argmax(1).numpy()
        guide = model.infer(scenes.images).counts.numpy()
        bins = model.config.max_steps + 1
        result["counts"][str(count)] = {
            "guide_acc": float((guide == count).mean()), "guide_histogram": np.bincount(guide, minlength=bins).tolist(),
            "best_elbo_acc": float((best == count).mean()),
            "best_elbo_histogram": np.bincount(best, minlength=bins).tolist()}
        print(count, result["counts"][str(count)], flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
