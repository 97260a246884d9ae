"""Where a batch-64 CPU training step spends its time, measured by taking parts away. Writes JSON.

Three trainers, timed in interleaved blocks of 10 steps (the machines drift by 10-40% within minutes, so only
interleaved times compare), median block reported:
  * ``full``: the eager step (``--compile off``);
  * ``image_weights_frozen``: the same, but the 2,500-pixel image projections (the guide's, and the NVIL
    baseline's where ``--z-pres-estimator nvil`` has one) take no gradient and no Adam update: full minus this is
    their backward, finiteness check and optimiser cost;
  * ``no_image_projections``: those projections replaced by zeros: frozen minus this is their forward.
These are ablations for measuring, not models to train. Also timed, alternating on the same real gradients:
the gradient finiteness check as norms of every gradient (the earlier rule) and as one sum per gradient
(``run_setup.all_finite``, the current one).

usage: python benchmarks/step_breakdown.py [--blocks 20] [--threads 2] [--precision bf16] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import time
import types
from pathlib import Path

import torch
from throughput import interleaved_step_seconds, make_trainer

from attend_infer_repeat.data import SceneConfig, make_scenes
from attend_infer_repeat.run_setup import Data, all_finite

HERE = Path(__file__).resolve().parent


def drop_image_weights(tr, replace_by_zeros: bool) -> None:
    """Take the image projections' weights out of training (and, if asked, the projections themselves)."""
    for lstm in [tr.model.lstm] + ([tr.model.baseline.lstm] if tr.model.baseline is not None else []):
        for p in lstm.image_proj.parameters():
            p.requires_grad_(False)
        if replace_by_zeros:
            width = lstm.image_proj.out_features
            lstm.project_image = types.MethodType(lambda self, x, w=width: x.new_zeros(x.size(0), w), lstm)
    for g in tr.opt.param_groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    tr.opt.state.clear()


def norms_finite(grads: list[torch.Tensor]) -> bool:
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=20, help="timed blocks of 10 steps per trainer")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--precision", default="bf16")
    p.add_argument("--out", default=str(HERE / "results" / "step_breakdown.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    scenes = make_scenes("train", 1024, SceneConfig())
    data = Data(torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts),
                torch.from_numpy(scenes.images[:64]), torch.from_numpy(scenes.counts[:64]))
    # the eager step (--compile off): its operators are what the parts taken away remove
    trainers = {name: make_trainer(data, 64, a.precision, train_options={"compile": "off"}) for name in
                ("full", "image_weights_frozen", "no_image_projections")}
    drop_image_weights(trainers["image_weights_frozen"], replace_by_zeros=False)
    drop_image_weights(trainers["no_image_projections"], replace_by_zeros=True)
    batches = [data.train_images[trainers["full"].next_batch()].float()[:, None] / 255 for _ in range(16)]
    ms = {k: round(1000 * v, 2) for k, v in interleaved_step_seconds(trainers, batches, a.blocks).items()}

    tr = trainers["full"]
    checks: dict[str, list[float]] = {"norms": [], "sums": []}
    for i in range(60):
        with tr.autocast():
            out = tr.model.loss(batches[i % 16], tr.step)
        tr.opt.zero_grad(set_to_none=True)
        (out.loss + out.baseline_loss).backward()
        grads = tr.gradients()
        name, check = (("norms", norms_finite), ("sums", all_finite))[i % 2]
        t0 = time.perf_counter()
        assert check(grads)
        checks[name].append(time.perf_counter() - t0)
        tr.opt.step()
    check_ms = {k: round(1000 * sorted(v[2:])[len(v[2:]) // 2], 3) for k, v in checks.items()}

    result = {"benchmark": "step_breakdown", "batch_size": 64, "precision": a.precision, "threads": a.threads,
              "blocks_of_10_steps": a.blocks, "ms_per_step": ms,
              "image_projections_backward_check_adam_ms": round(ms["full"] - ms["image_weights_frozen"], 2),
              "image_projections_forward_ms": round(ms["image_weights_frozen"] - ms["no_image_projections"], 2),
              "image_projections_share_of_step": round(1 - ms["no_image_projections"] / ms["full"], 3),
              "finiteness_check_ms": check_ms}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
