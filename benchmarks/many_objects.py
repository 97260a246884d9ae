"""Many objects: the grid model, AIR and DAIR on the same many-MNIST scenes, the same budget, the same evaluation.

For each model and seed this runs the real command line, one training at a time:
  air train --dataset mnist-many --model grid|air [--dair] [--max-steps 15] --seed S --minutes M --run-dir RUNS/...
and then scores the final model (last.pt) through the public API on held-out scenes built from MNIST *test*
digits: mnist-many (0-15 digits, 84x84), the transfer set mnist-many-20 restricted to 16-20 digits, and 0-20 digits
on a 128x128 canvas (the grid model read at that size by ``for_canvas``: the same cells in pixels, more of them;
AIR's input layer is its canvas, so it is shown the scene resized to 84x84, digits 9-13 px). Per model: count
accuracy, count mean absolute error, accuracy by true count, AP50 (the boxes of what each found object draws
against the digits' ink boxes, ranked by q), mean IoU of matched boxes, and inference images/s by true count (1,
5, 10, 15, 20 digits: the grid model's should be flat). ``--ordinary-minutes M``: also the grid model and AIR
trained M minutes each on the ordinary benchmark (0-2 digits, 50x50, ``air train``'s default data) and their
count accuracy there. Writes benchmarks/results/many_objects.json and, with ``--figure``, many_objects.png/.svg.

usage: python benchmarks/many_objects.py [--models grid,air,dair] [--seeds 0,1,2] [--minutes 20] [--threads 2]
                                         [--n-test 2000] [--ordinary-minutes 0] [--reuse] [--figure]
                                         [--out FILE] [-- extra air train options]
``--reuse``: a run whose folder already holds its summary.json and last.pt is scored again, not trained again.
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
    """Counting and detection on ``scenes`` through the public API (scenes of another canvas size: the grid
    model read at that size, AIR shown the scene resized to its canvas, boxes scaled back)."""
    from attend_infer_repeat.evaluate import average_precision, localisation_metrics

    images, factor = scenes.images, 1.0
    size, own = images.shape[-1], model.config.image_size
    if size != own and hasattr(model, "for_canvas"):
        model = model.for_canvas(size)
    elif size != own:
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
        images = torch.nn.functional.interpolate(x, size=(own, own), mode="bilinear", antialias=True)[:, 0]
        factor = size / own
    t0 = time.perf_counter()
    result = model.infer(images)
    seconds = time.perf_counter() - t0
    pred, true = result.counts.numpy(), np.asarray(scenes.counts)
    by_count = {str(c): float((pred[true == c] == c).mean()) for c in np.unique(true)}
    boxes = [b.numpy() * factor for b in result.object_boxes]
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
    p.add_argument("--ordinary-minutes", type=float, default=0.0)
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--figure", action="store_true")
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
    canvas128 = load_or_make_scenes("test", a.n_test // 2, SceneConfig(dataset="mnist-many-20", canvas_size=128,
                                                                      seed=1))
    results = {**record(), "benchmark": "many_objects", "minutes": a.minutes, "threads": a.threads,
               "extra": extra, "held_out": "mnist-many test scenes (seed 1)",
               "transfer": "mnist-many-20 test scenes with 16-20 digits (seed 1)",
               "canvas128": "mnist-many-20 test scenes on a 128x128 canvas, 0-20 digits (seed 1)", "runs": []}
    for name in [m for m in a.models.split(",") if m]:  # --models "": only the ordinary benchmark
        for seed in [int(s) for s in a.seeds.split(",")]:
            run_dir = Path(a.runs) / f"{name}-seed{seed}-min{a.minutes:g}"
            command = ["train", "--dataset", "mnist-many", *MODELS[name], "--seed", str(seed), "--minutes",
                       str(a.minutes), "--threads", str(a.threads), "--run-dir", str(run_dir), "--no-progress", *extra]
            summary, wall = trained(command, run_dir, a.reuse)
            model = AIR.load(run_dir / "last.pt")
            row = {"model": name, "seed": seed, "command": "air " + " ".join(command),
                   "steps": summary["steps"], "train_minutes": summary["train_minutes"], "wall_minutes": wall,
                   "held_out": score(model, held_out), "transfer_16_20": score(model, transfer),
                   "canvas128": score(model, canvas128), "images_per_s_by_count": speed_by_count(model),
                   "traps": [t["name"] for t in summary["traps"]],
                   "restarts": [[t["name"] for t in r["traps"]] for r in summary.get("restarts", [])]}
            results["runs"].append(row)
            print(json.dumps({k: row[k] for k in ("model", "seed", "steps", "train_minutes")}
                             | {"acc": row["held_out"]["count_acc"], "ap50": row["held_out"]["ap50"],
                                "mae": row["held_out"]["count_mae"]}), flush=True)
            out_path.write_text(json.dumps(results, indent=2))
    if a.ordinary_minutes:
        results["ordinary"] = ordinary(a, extra)
        out_path.write_text(json.dumps(results, indent=2))
    if a.figure:
        figure(results, out_path.with_suffix(""))
    print(f"wrote {out_path}")


def trained(command: list[str], run_dir: Path, reuse: bool) -> tuple[dict, float | None]:
    """Train (``air`` + command) into run_dir, or with ``reuse`` take the run already finished there: its
    summary and the wall minutes of this training (None for a reused run)."""
    done = run_dir / "summary.json"
    if reuse and done.exists() and (run_dir / "last.pt").exists():
        return json.loads(done.read_text()), None
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.time()
    summary = json.loads(air(*command).stdout.strip().splitlines()[-1])
    return summary, round((time.time() - t0) / 60, 2)


def ordinary(a, extra: list[str]) -> list[dict]:
    """The grid model and AIR on the ordinary benchmark (0-2 digits, 50x50): ``air train`` for the same minutes,
    count accuracy of the final model on held-out scenes of MNIST test digits."""
    from attend_infer_repeat import AIR
    from attend_infer_repeat.data import load_or_make_scenes

    scenes = load_or_make_scenes("test", a.n_test, None)
    rows = []
    for name, flags in (("grid", ["--model", "grid"]), ("air", [])):
        for seed in [int(s) for s in a.seeds.split(",")]:
            run_dir = Path(a.runs) / f"ordinary-{name}-seed{seed}-min{a.ordinary_minutes:g}"
            command = ["train", *flags, "--seed", str(seed), "--minutes", str(a.ordinary_minutes), "--threads",
                       str(a.threads), "--run-dir", str(run_dir), "--no-progress", *extra]
            summary, wall = trained(command, run_dir, a.reuse)
            held = score(AIR.load(run_dir / "last.pt"), scenes)
            rows.append({"model": name, "seed": seed, "command": "air " + " ".join(command),
                         "steps": summary["steps"], "train_minutes": summary["train_minutes"],
                         "wall_minutes": wall, "held_out": held})
            print(json.dumps({"ordinary": name, "seed": seed, "acc": held["count_acc"]}), flush=True)
    return rows


def figure(results: dict, stem: Path) -> None:
    """Count accuracy by true count (held-out 0-15 and the 16-20 transfer) and inference images/s by count, one
    line per model (mean over seeds): many_objects.png and .svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in dict.fromkeys(r["model"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["model"] == name]
        by = {}
        for r in runs:
            for part in ("held_out", "transfer_16_20"):
                for c, v in r[part]["count_acc_by_true_count"].items():
                    by.setdefault(int(c), []).append(v)
        counts = sorted(by)
        line, = left.plot(counts, [100 * np.mean(by[c]) for c in counts], marker=".", label=name)
        speed = sorted({int(c) for r in runs for c in r["images_per_s_by_count"]})
        right.plot(speed, [np.mean([r["images_per_s_by_count"][str(c)] for r in runs]) for c in speed],
                   marker="o", color=line.get_color(), label=name)
    left.axvline(15.5, color="grey", lw=0.8, ls="--")
    left.set(xlabel="true digit count (trained on 0-15; right of the line: unseen)", ylabel="count accuracy (%)",
             ylim=(0, 100))
    right.set(xlabel="digits in the scene", ylabel="inference images/s", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"many-MNIST, 84x84: {results['minutes']:g} minutes of training on {results['threads']} threads, "
                 f"{results['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(f"{stem}.{ext}", dpi=110)


if __name__ == "__main__":
    main()
