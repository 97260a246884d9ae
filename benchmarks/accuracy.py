"""Count accuracy and reliability of the default `air train`, over many seeds. Writes JSON.

Each seed runs the real command line (`air train` with its defaults, plus any extra options given after --),
then the final model is scored through the public API alone (`AIR.load` + `evaluate` / `infer`):
  * on the run's own 10,000 held-out scenes (MNIST test digits): deterministic and sampled count accuracy, box
    recall at IoU 0.5 against the digits' ink boxes (the boxes of what each object draws, and the windows);
  * on scenes built unlike the training scenes (benchmarks/robustness.py: other and mixed digit sizes, digits
    that touch or overlap), to check it learned the task rather than the data set.
The summary of each run (precision, compile, trap check, restarts, minutes) comes from `air train` itself.

usage: python benchmarks/accuracy.py [--seeds 0-19] [--parallel 2] [--out FILE] [-- extra air train options]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def parse_seeds(text: str) -> list[int]:
    """'0-19' or '0,1,5' or '0-4,10'."""
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    return seeds


def run_seed(seed: int, run_root: Path, threads: int, extra: list[str]) -> dict:
    run_dir = run_root / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # each benchmark run starts afresh (air train refuses old runs)
    cmd = [sys.executable, "-m", "attend_infer_repeat.cli", "train", "--seed", str(seed), "--run-dir", str(run_dir),
           "--threads", str(threads), "--no-progress", *extra]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"seed": seed, "error": proc.stderr[-2000:]}
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_minutes"] = round((time.time() - t0) / 60, 2)
    summary["seed"] = seed
    summary["warnings"] = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    return summary


def score_run(run_dir: Path, sets: dict) -> dict:
    """The final model of a run, through the public API: its held-out scenes and the robustness sets."""
    from attend_infer_repeat import AIR
    from attend_infer_repeat.evaluate import evaluate, load_run, run_test_scenes

    from robustness import score

    model, cfg, step = load_run(run_dir / "last.pt")
    ev = evaluate(model, run_test_scenes(cfg), iw_samples=0, train_step=step)
    keep = ("count_acc", "sampled_count_acc", "count_acc_per_true_count", "confusion", "elbo")
    out = {k: ev[k] for k in keep}
    out["box_recall_objects_vs_ink"] = ev["localisation_objects"]["recall"]
    out["box_mean_iou_objects_vs_ink"] = ev["localisation_objects"]["mean_iou"]
    out["box_recall_windows_vs_ink"] = ev["localisation_ink"]["recall"]
    out["robustness"] = {k: v["count_acc"] for k, v in score(AIR.load(run_dir / "last.pt"), sets).items()}
    return out


def main() -> None:
    from common import record
    from robustness import scene_sets

    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0-19", help="seeds: a range 0-19, a list 0,1,5, or both")
    p.add_argument("--parallel", type=int, default=2, help="runs at once (the cores are split between them)")
    p.add_argument("--robust-n", type=int, default=2000, help="scenes per robustness set (0: skip them)")
    p.add_argument("--out", default=str(HERE / "results" / "accuracy.json"))
    p.add_argument("--run-root", default=str(HERE / "results" / "accuracy_runs"))
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # this process only scores, beside the training runs
    seeds = parse_seeds(a.seeds)
    threads = max(1, (os.cpu_count() or 1) // a.parallel)
    run_root = Path(a.run_root)
    out_path = Path(a.out)
    sets = scene_sets(a.robust_n) if a.robust_n else {}
    result = {"benchmark": "accuracy", "command": "air train " + " ".join(extra), "seeds": seeds,
              "parallel_runs": a.parallel, "threads_per_run": threads, **record(), "runs": []}

    def finish(run: dict) -> dict:
        if "error" not in run:
            run["scored"] = score_run(Path(run["run_dir"]), sets) if sets else {}
        return run

    with ThreadPoolExecutor(a.parallel) as pool:
        for run in pool.map(lambda s: finish(run_seed(s, run_root, threads, extra)), seeds):
            result["runs"].append(run)
            _summarise(result)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(result, indent=2))  # after every seed: a long sweep keeps what it has
            print(f"seed {run['seed']}: " + ("error" if "error" in run else
                  f"{run['held_out_count_acc']:.4f} ({run['precision']}, compiled {run['compiled']}, "
                  f"{run['train_minutes']} min, restarts {len(run['restarts'])})"), flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


def _summarise(result: dict) -> None:
    ok = [r for r in result["runs"] if "error" not in r]
    accs = [r["held_out_count_acc"] for r in ok]
    result["summary"] = {
        "runs": len(result["runs"]), "failed_runs": len(result["runs"]) - len(ok),
        "held_out_count_acc_median": float(np.median(accs)) if accs else None,
        "held_out_count_acc_min": min(accs) if accs else None,
        "seeds_reaching_98": sum(x >= 0.98 for x in accs), "seeds_reaching_99": sum(x >= 0.99 for x in accs),
        "precisions": sorted({r["precision"] for r in ok}), "compiled": sorted({r["compiled"] for r in ok}),
        "runs_with_restarts": sum(bool(r.get("restarts")) for r in ok),
        "runs_with_trap_warnings": sum(bool(r.get("traps")) for r in ok),
        "train_minutes_median": float(np.median([r["train_minutes"] for r in ok])) if ok else None,
        "train_minutes_max": max((r["train_minutes"] for r in ok), default=None),
    }
    scored = [r["scored"] for r in ok if r.get("scored")]
    if scored:
        result["summary"]["sampled_count_acc_median"] = float(np.median([s["sampled_count_acc"] for s in scored]))
        result["summary"]["box_recall_objects_vs_ink_min"] = min(s["box_recall_objects_vs_ink"] for s in scored)
        result["summary"]["robustness_min"] = {k: min(s["robustness"][k] for s in scored)
                                               for k in scored[0]["robustness"]}
        result["summary"]["robustness_median"] = {k: float(np.median([s["robustness"][k] for s in scored]))
                                                  for k in scored[0]["robustness"]}


if __name__ == "__main__":
    main()
