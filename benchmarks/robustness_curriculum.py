"""A probe of one way to make the default model robust to other digit sizes and to overlapping digits: train on
the paper's scenes first, then go on from those weights on varied scenes (digits 18-32 px, ink boxes up to an
IoU of ``--max-overlap``), and score both models on the sets of ``robustness.py``. Training on the varied scenes
from the start falls into the split-object trap (every large digit counted twice), which is why the probe starts
from a model that already counts.

usage: python benchmarks/robustness_curriculum.py --seeds 0,1 [--steps 3000,3000] [--max-overlap 0.3] --out FILE
(each seed is one single-thread process; two seeds run side by side)
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one_seed(seed: int, steps: tuple[int, int], max_overlap: float, root: str, n: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from attend_infer_repeat import AIR
    from attend_infer_repeat.config import RunConfig, TrainConfig
    from attend_infer_repeat.train import Trainer

    from robustness import scene_sets, score

    torch.set_num_threads(1)
    run = Path(root) / f"seed{seed}"
    t0 = time.time()
    first = RunConfig(train=TrainConfig(steps=steps[0], seed=seed, threads=1))
    Trainer(first, run / "paper_scenes", progress=False, tensorboard=False).fit()
    # the second phase's own trap check would restart it from new weights, which is not the probe
    then = RunConfig(train=TrainConfig(steps=steps[1], seed=seed, threads=1, restarts=0, digit_size=18,
                                       max_digit_size=32, max_overlap=max_overlap))
    trainer = Trainer(then, run / "varied_scenes", progress=False, tensorboard=False)
    trainer.model.load_state_dict(AIR.load(run / "paper_scenes" / "last.pt").state_dict())
    trainer.fit()
    minutes = (time.time() - t0) / 60
    sets = scene_sets(n)
    out = {"seed": seed, "minutes": round(minutes, 2)}
    for phase in ("paper_scenes", "varied_scenes"):
        out[phase] = {k: v["count_acc"] for k, v in score(AIR.load(run / phase / "last.pt"), sets).items()}
    return out


def main() -> None:
    from common import record

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", default="3000,3000", help="steps on the paper's scenes, then on the varied ones")
    p.add_argument("--max-overlap", type=float, default=0.3)
    p.add_argument("--n", type=int, default=2000, help="scenes per robustness set")
    p.add_argument("--runs", default="runs/robustness_curriculum")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    steps = tuple(int(s) for s in a.steps.split(","))
    with multiprocessing.get_context("spawn").Pool(min(2, len(seeds))) as pool:
        results = pool.starmap(one_seed, [(s, steps, a.max_overlap, a.runs, a.n) for s in seeds])
    out = {"benchmark": "robustness_curriculum", **record(), "precision": "auto", "compile": "auto",
           "steps": list(steps), "max_overlap": a.max_overlap, "scenes_per_set": a.n, "seeds": results}
    Path(a.out).write_text(json.dumps(out, indent=2))
    for r in results:
        print(r["seed"], {k: round(v, 4) for k, v in r["varied_scenes"].items()})


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
