"""A short look at how the grid model (``--model grid``) learns on many-MNIST: its own small training loop (Adam,
batch 32, 20,000 cached training scenes), count accuracy, count error and presence every 100 steps on 500
held-out scenes. For choosing the grid model's defaults quickly; the product numbers come from
``many_objects.py`` (the real ``air train``).

usage: python benchmarks/grid_probe.py TAG '{"grid_size": 8, ...}' [--steps 1500] [--threads 1]
(the JSON: ModelConfig fields beside architecture "grid", image_size 84 and scale_prior_mean 5). Each TAG's
curve goes into benchmarks/results/grid_probes.json (read, updated and written back at every evaluation, so two
probes may run side by side).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import record  # noqa: E402

OUT = HERE / "results" / "grid_probes.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tag")
    p.add_argument("model", help="ModelConfig fields as JSON")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from attend_infer_repeat.data import SceneConfig, load_or_make_scenes
    from attend_infer_repeat.model import GridAIR, ModelConfig

    fields = json.loads(a.model)
    cfg = ModelConfig(**{"architecture": "grid", "image_size": 84, "scale_prior_mean": 5.0, **fields})
    torch.manual_seed(a.seed)
    model = GridAIR(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    train = torch.from_numpy(load_or_make_scenes("train", 20000, SceneConfig(dataset="mnist-many")).images)
    test = load_or_make_scenes("test", 500, SceneConfig(dataset="mnist-many", seed=1))
    order = torch.Generator().manual_seed(a.seed + 1)
    entry = {**record(), "tag": a.tag, "model": fields, "steps": a.steps, "batch_size": 32, "lr": a.lr,
             "seed": a.seed, "threads": a.threads, "command": " ".join(sys.argv), "curve": []}
    t0 = time.time()
    for step in range(1, a.steps + 1):
        x = train[torch.randint(0, len(train), (32,), generator=order)][:, None].float() / 255
        out = model.loss(x, train_step=step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % 100 == 0 or step == a.steps:
            r = model.infer(test.images)
            pred, true = r.counts.numpy(), test.counts
            point = {"step": step, "seconds": round(time.time() - t0), "count_acc": float((pred == true).mean()),
                     "count_mae": float(np.abs(pred - true).mean()), "count_bias": float((pred - true).mean()),
                     "train_elbo": round(float(out.elbo.mean()), 1), "prior": float(model.prior(step))}
            entry["curve"].append(point)
            print(json.dumps({"tag": a.tag, **point}), flush=True)
            results = json.loads(OUT.read_text()) if OUT.exists() else {"benchmark": "grid_probe", "probes": {}}
            results["probes"][a.tag] = entry
            OUT.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
