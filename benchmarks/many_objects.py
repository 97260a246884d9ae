"""Many objects: the grid model, AIR and DAIR on the same many-MNIST scenes, the same budget, the same evaluation.

For each model and seed this runs the real command line, one training at a time:
  air train --dataset mnist-many --model grid|air [--dair] [--max-steps 15] --seed S --minutes M --run-dir RUNS/...
and then scores the final model (last.pt) through the public API on held-out scenes built from MNIST *test*
digits: mnist-many (0-15 digits, 84x84) and the transfer set mnist-many-20 restricted to 16-20 digits. Per model:
count accuracy, count mean absolute error, accuracy by true count, AP50 (the boxes of what each found object
draws against the digits' ink boxes, ranked by q), mean IoU of matched boxes, and inference images/s by true
count (1, 5, 10, 15, 20 digits: the grid model's should be flat). Writes benchmarks/results/many_objects.json.

usage: python benchmarks/many_objects.py [--models grid,air,dair] [--seeds 0,1,2] [--minutes 20] [--threads 2]
                                         [--n-test 2000] [--out FILE] [-- extra air train options]
A quick look: --minutes 2 --seeds 0 --n-test 300 (written to results/tmp_many_objects.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import air, record  # noqa: E402

#: what each model name means on the command line (AIR and DAIR get one step per digit of the training counts)
MODELS = {"grid": ["--model", "grid"], "air": ["--max-steps", "15"], "dair": ["--dair", "--max-steps", "15"]}


def score(model, scenes) -> dict:
    """Counting and detection on ``scenes`` through the public API."""
    from attend_infer_repeat.evaluate import average_precision, localisation_metrics

    t0 = time.perf_counter()
    result = model.infer(scenes.images)
    seconds = time.perf_counter() - t0
    pred, true = result.counts.numpy(), np.asarray(scenes.counts)
    by_count = {str(c): float((pred[true == c] == c).mean()) for c in np.unique(true)}
    boxes = [b.numpy() for b in result.object_boxes]
    return {"n": int(len(true)), "count_acc": float((pred == true).mean()),
            "count_mae": float(np.abs(pred - true).mean()), "count_bias": float((pred - true).mean()),
            "count_acc_by_true_count": by_count,
            "ap50": average_precision(boxes, [s.numpy() for s in result.object_scores], scenes.ink_boxes, 0.5),
            "mean_iou": localisation_metrics(boxes, scenes.ink_boxes)["mean_iou"],
            "images_per_s": round(len(true) / seconds, 1)}


def speed_by_count(model, counts=(1, 5, 10, 15, 20), n: int = 200, repeats: int = 3) -> dict:
    """Inference images/s on scenes of exactly each count (the best of ``repeats``)."""
    from attend_infer_repeat.data import SceneConfig, make_scenes

    out = {}
    for c in counts:
        scenes = make_scenes("test", n, SceneConfig(dataset="mnist-many-20", counts=(c,), seed=7))
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.infer(scenes.images)
            best = min(best, time.perf_counter() - t0)
        out[str(c)] = round(n / best, 1)
    return out


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="grid,air,dair")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--runs", default="runs/many_objects")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    quick = a.minutes < 5
    out_path = Path(a.out) if a.out else HERE / "results" / ("tmp_many_objects.json" if quick else "many_objects.json")

    from attend_infer_repeat import AIR
    from attend_infer_repeat.data import SceneConfig, load_or_make_scenes

    torch.set_num_threads(a.threads)
    held_out = load_or_make_scenes("test", a.n_test, SceneConfig(dataset="mnist-many", seed=1))
    transfer = load_or_make_scenes("test", a.n_test, SceneConfig(dataset="mnist-many-20", counts=tuple(range(16, 21)),
                                                                 seed=1))
    results = {**record(), "benchmark": "many_objects", "minutes": a.minutes, "threads": a.threads,
               "extra": extra, "held_out": "mnist-many test scenes (seed 1)",
               "transfer": "mnist-many-20 test scenes with 16-20 digits (seed 1)", "runs": []}
    for name in a.models.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            run_dir = Path(a.runs) / f"{name}-seed{seed}-min{a.minutes:g}"
            shutil.rmtree(run_dir, ignore_errors=True)
            command = ["train", "--dataset", "mnist-many", *MODELS[name], "--seed", str(seed), "--minutes",
                       str(a.minutes), "--threads", str(a.threads), "--run-dir", str(run_dir), "--no-progress", *extra]
            t0 = time.time()
            summary = json.loads(air(*command).stdout.strip().splitlines()[-1])
            model = AIR.load(run_dir / "last.pt")
            row = {"model": name, "seed": seed, "command": "air " + " ".join(command),
                   "steps": summary["steps"], "train_minutes": summary["train_minutes"],
                   "wall_minutes": round((time.time() - t0) / 60, 2), "held_out": score(model, held_out),
                   "transfer_16_20": score(model, transfer), "images_per_s_by_count": speed_by_count(model),
                   "traps": [t["name"] for t in summary["traps"]]}
            results["runs"].append(row)
            print(json.dumps({k: row[k] for k in ("model", "seed", "steps", "train_minutes")}
                             | {"acc": row["held_out"]["count_acc"], "ap50": row["held_out"]["ap50"],
                                "mae": row["held_out"]["count_mae"]}), flush=True)
            out_path.write_text(json.dumps(results, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
