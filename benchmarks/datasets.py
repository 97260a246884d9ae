"""More than MNIST: the default `air train` on Multi-Fashion-MNIST and on procedural sprites. Writes JSON + PNGs.

For each data set, one after the other (one training at a time), this runs the real command line:
  air train --dataset NAME --seed SEED --threads THREADS --run-dir RUNS/NAME --steps STEPS [extra options]
  air eval RUNS/NAME --json RUNS/NAME/eval.json   (the final model, not best.pt: see below)
and records the held-out count accuracy (the run's 10,000 held-out scenes, built from Fashion-MNIST *test*
items / sprites of another seed), per-count accuracy, box recall and the training time in
benchmarks/results/datasets.json, and a picture of held-out scenes with the windows AIR chose and its
reconstructions in docs/DATASET.png.

usage: python benchmarks/datasets.py [--datasets fashion,sprites] [--steps 6000] [--seed 0] [--threads 1]
                                     [--out FILE] [--tag SUFFIX] [-- extra air train options]
The README's numbers: `python benchmarks/datasets.py` (the two default runs) and
`python benchmarks/datasets.py --datasets fashion --tag _zoom3 -- --scale-prior-mean 3` (multi-MNIST's zoom
prior on Multi-Fashion-MNIST, for comparison).
A quick look: --steps 500 (the numbers are then far from the default run's; written to
benchmarks/results/tmp_datasets_steps500.json, pictures in the run directories).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import air  # noqa: E402


def picture(run_dir: Path, out: Path, n: int = 12) -> Path:
    """Held-out scenes (all counts, two-object scenes first) with each step's window, over the reconstructions."""
    from attend_infer_repeat import AIR
    from attend_infer_repeat.evaluate import load_run, run_test_scenes
    from attend_infer_repeat.visualise import draw_inference

    model = AIR.load(run_dir / "last.pt")
    _, cfg, _ = load_run(run_dir / "last.pt")
    scenes = run_test_scenes(cfg, 300)
    shares = {2: n - n // 3 - n // 6, 1: n // 3, 0: n // 6}
    idx = np.concatenate([np.flatnonzero(scenes.counts == c)[:k] for c, k in shares.items()])
    result = model.infer(scenes.images[idx])
    out.parent.mkdir(parents=True, exist_ok=True)
    return draw_inference(scenes.images[idx], result, out, true_counts=scenes.counts[idx].tolist())


def run(name: str, a, extra: list[str]) -> dict:
    key = name + a.tag
    run_dir = Path(a.runs) / (key if a.steps == 6000 else f"{key}-steps{a.steps}")  # a quick look keeps its own
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: air train would append to an old metrics.jsonl
    t0 = time.time()
    proc = air("train", "--dataset", name, "--seed", str(a.seed), "--threads", str(a.threads), "--run-dir",
               str(run_dir), "--steps", str(a.steps), "--no-progress", *extra)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    wall = time.time() - t0
    # the final model (last.pt), as the README's MNIST table reports; best.pt is chosen on held-out scenes
    air("eval", str(run_dir / "last.pt"), "--iw-samples", "0", "--json", str(run_dir / "eval.json"))
    ev = json.loads((run_dir / "eval.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    fig = picture(run_dir, (ROOT / "docs" if a.for_readme else run_dir) / f"{key}.png")
    return {
        "dataset": name,
        "command": f"air train --dataset {name} --seed {a.seed} --threads {a.threads} --steps {a.steps}"
                   + (" " + " ".join(extra) if extra else ""),
        "object_size": [cfg["train"]["digit_size"], cfg["train"]["max_digit_size"]],
        "scale_prior_mean": cfg["model"]["scale_prior_mean"],
        "held_out_count_acc": ev["count_acc"],
        "count_acc_per_true_count": ev["count_acc_per_true_count"],
        "confusion": ev["confusion"],
        "held_out_n": ev["n"],
        "box_recall_at_0.5": ev["localisation"]["recall"],
        "box_mean_iou": ev["localisation"]["mean_iou"],
        "ink_box_recall_at_0.5": ev.get("localisation_ink", {}).get("recall"),
        "held_out_elbo": ev["elbo"],
        "best_checkpoint": summary["best"],
        "train_minutes": summary["train_minutes"],
        "wall_minutes_with_data_and_eval": round(wall / 60, 2),
        "images_per_s": summary["images_per_s"],
        "precision": summary["precision"],
        "figure": str(fig.relative_to(ROOT)) if fig.is_relative_to(ROOT) else str(fig),
    }


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="fashion,sprites", help="comma-separated: fashion, sprites, mnist")
    p.add_argument("--steps", type=int, default=6000, help="training steps (the default air train: 6000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: leaves a core free)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "datasets"), help="where the run directories go")
    p.add_argument("--out", default=None, help="the JSON to update (default: results/datasets.json for the "
                   "default 6000 steps, results/tmp_datasets_stepsN.json, not committed, for other budgets)")
    p.add_argument("--tag", default="", help="a variant's suffix for its run directory and its key in the JSON "
                   "(e.g. --tag _s3 -- --scale-prior-mean 3); its picture stays in the run directory")
    a = p.parse_args(argv)
    # only the default budget's untagged runs make the README's pictures; a quick look leaves them alone
    a.for_readme = a.steps == 6000 and not a.tag
    out = Path(a.out) if a.out else HERE / "results" / (
        "datasets.json" if a.steps == 6000 else f"tmp_datasets_steps{a.steps}.json")
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("runs", {})
    for name in a.datasets.split(","):
        print(f"training on {name} ({a.steps} steps, {a.threads} thread(s)) ...", file=sys.stderr, flush=True)
        r = run(name, a, extra)
        results["runs"][name + a.tag] = r
        results["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                              "python": platform.python_version()}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")  # after each data set: partial results survive
        print(f"{name}: held-out count accuracy {r['held_out_count_acc']:.4f} on {r['held_out_n']} scenes, "
              f"{r['train_minutes']} min of training; {r['figure']}", file=sys.stderr, flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
