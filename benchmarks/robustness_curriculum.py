"""A probe of one way to make the default model robust to other digit sizes and to overlapping digits: train on
the paper's scenes first, then go on from those weights on varied scenes (digits 18-32 px, ink boxes up to an
IoU of ``--max-overlap``), and score both models on the sets of ``robustness.py``. Training on the varied scenes
from the start falls into the split-object trap (every large digit counted twice), which is why the probe starts
from a model that already counts.

The second phase is what ``air train --init-from RUN/last.pt --restarts 0 --digit-size 18 --max-digit-size 32
--max-overlap 0.3`` does; ``--phase2-model`` changes its model options (e.g. '{"composition": "max"}': objects
overlap as ink does; '{"scale_prior_std": 0.5}') and ``--phase2-data`` its scenes (e.g. '{"digit_size": 28,
"max_digit_size": null}': overlap only); ``--model`` changes the model of both phases (e.g. '{"decoder_hidden": 400}':
a larger what-decoder, which the first phase must then train too). A phase-1 run already in ``--runs`` with the same
``--model`` is reused. ``--phase2-freeze decoder`` keeps the what-decoder of the first phase in the second.

usage: python benchmarks/robustness_curriculum.py --seeds 0,1 [--steps 3000,3000] [--max-overlap 0.3]
       [--model JSON] [--phase2-model JSON] [--phase2-data JSON] [--phase2-freeze decoder] [--tag NAME]
       --out FILE
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


def one_seed(seed: int, steps: tuple[int, int], max_overlap: float, root: str, n: int, model_options: dict,
             data_options: dict, tag: str, both_model: dict, freeze: tuple[str, ...] = ()) -> dict:
    import dataclasses
    import hashlib

    import torch

    sys.path.insert(0, str(HERE))
    from attend_infer_repeat import AIR
    from attend_infer_repeat.config import RunConfig, TrainConfig
    from attend_infer_repeat.model.config import ModelConfig
    from attend_infer_repeat.train import Trainer

    from robustness import scene_sets, score

    torch.set_num_threads(1)
    run = Path(root) / f"seed{seed}"
    t0 = time.time()
    first = RunConfig(model=ModelConfig(**both_model), train=TrainConfig(steps=steps[0], seed=seed, threads=1))
    # a phase-1 run is reused only by a probe with the same model options (its directory names their hash)
    key = json.dumps(both_model, sort_keys=True)
    phase1 = "paper_scenes" + ("-" + hashlib.sha1(key.encode()).hexdigest()[:8] if both_model else "")
    if not (run / phase1 / "last.pt").exists():
        Trainer(first, run / phase1, progress=False, tensorboard=False).fit()
    # the second phase goes on from the first one's weights (air train --init-from, which never restarts)
    data = {"digit_size": 18, "max_digit_size": 32, "max_overlap": max_overlap, **data_options}
    then = RunConfig(model=dataclasses.replace(first.model, **model_options),
                     train=TrainConfig(steps=steps[1], seed=seed, threads=1,
                                       init_from=str(run / phase1 / "last.pt"), **data))
    second = f"varied_scenes{'-' + tag if tag else ''}"
    trainer = Trainer(then, run / second, progress=False, tensorboard=False)
    for name in freeze:  # modules the second phase keeps as the first one left them
        for weight in getattr(trainer.model, name).parameters():
            weight.requires_grad_(False)
    trainer.fit()
    minutes = (time.time() - t0) / 60
    sets = scene_sets(n)
    out = {"seed": seed, "minutes": round(minutes, 2)}
    for name, phase in (("paper_scenes", phase1), (second, second)):
        out[name] = {k: v["count_acc"] for k, v in score(AIR.load(run / phase / "last.pt"), sets).items()}
    return out


def main() -> None:
    from common import record

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", default="3000,3000", help="steps on the paper's scenes, then on the varied ones")
    p.add_argument("--max-overlap", type=float, default=0.3)
    p.add_argument("--n", type=int, default=2000, help="scenes per robustness set")
    p.add_argument("--model", default="{}", help="model options of both phases, as JSON")
    p.add_argument("--phase2-model", default="{}", help="model options of the second phase, as JSON")
    p.add_argument("--phase2-data", default="{}", help="scene options of the second phase, as JSON")
    p.add_argument("--phase2-freeze", default="", help="modules the second phase does not train, e.g. 'decoder'")
    p.add_argument("--tag", default="", help="names the second phase's run directory")
    p.add_argument("--runs", default="runs/robustness_curriculum")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    steps = tuple(int(s) for s in a.steps.split(","))
    with multiprocessing.get_context("spawn").Pool(min(2, len(seeds))) as pool:
        results = pool.starmap(one_seed, [(s, steps, a.max_overlap, a.runs, a.n, json.loads(a.phase2_model),
                                           json.loads(a.phase2_data), a.tag, json.loads(a.model),
                                           tuple(filter(None, a.phase2_freeze.split(",")))) for s in seeds])
    out = {"benchmark": "robustness_curriculum", **record(), "precision": "auto", "compile": "auto",
           "steps": list(steps), "max_overlap": a.max_overlap, "model": json.loads(a.model),
           "phase2_model": json.loads(a.phase2_model), "phase2_freeze": a.phase2_freeze,
           "phase2_data": json.loads(a.phase2_data), "scenes_per_set": a.n, "seeds": results}
    Path(a.out).write_text(json.dumps(out, indent=2))
    for r in results:
        print(r["seed"], {k: round(v, 4) for k, v in r[[k for k in r if k.startswith("varied_scenes")][0]].items()})


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
