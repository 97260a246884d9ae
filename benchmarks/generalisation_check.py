"""An independent check of `air experiment generalisation`: a run's final model scored through the public API
alone (``AIR.load`` + ``infer``, the guide's count and the refined count) on new scenes that the experiment never
drew (another scene seed), so the experiment's own scoring code is not what is checked against itself.

usage: python benchmarks/generalisation_check.py RUN_DIR --counts 3 --digit-size 24 [--n 500] [--out FILE]
"""
import argparse
import json
import time

import numpy as np
import torch

from attend_infer_repeat import AIR, SceneConfig
from attend_infer_repeat.data import make_scenes

from common import record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run directory of the experiment (holding last.pt)")
    p.add_argument("--counts", required=True, help="digit counts of the new scenes, e.g. 3 or 0,1,3")
    p.add_argument("--digit-size", type=int, required=True, help="digit size in pixels (the setting's)")
    p.add_argument("--n", type=int, default=500, help="new scenes")
    p.add_argument("--scene-seed", type=int, default=777, help="scene seed (the experiment's are 0-2)")
    p.add_argument("--refine-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="JSON file to write (default: print only)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = AIR.load(f"{a.run}/last.pt")
    counts = tuple(int(c) for c in a.counts.split(","))
    scenes = make_scenes("test", a.n, SceneConfig(canvas_size=model.config.image_size, digit_size=a.digit_size,
                                                  counts=counts, seed=a.scene_seed))
    out = {"benchmark": "generalisation_check", **record(), "run": a.run, "counts": counts,
           "digit_size": a.digit_size, "scenes": a.n, "scene_seed": a.scene_seed, "threads": a.threads,
           "precision": "fp32 (AIR.infer)", "compile": "off (AIR.infer runs eagerly)"}
    for name, steps in (("guide", 0), ("refined", a.refine_steps)):
        t = time.time()
        found = model.infer(scenes.images, refine_steps=steps).counts.numpy()
        out[name] = {"count_acc": float((found == scenes.counts).mean()),
                     "counted": {int(v): int((found == v).sum()) for v in np.unique(found)},
                     "seconds": round(time.time() - t, 1)}
        print(f"{name}: {out[name]['count_acc']:.1%} {out[name]['counted']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
