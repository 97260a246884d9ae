"""Count accuracy and reliability of the default `air train`, over several seeds. Writes JSON.

Each seed runs the real command line (`air train` with its defaults, plus any extra options given after --),
then the final model is scored through the public API alone (`AIR.load` + `infer`):
  * on the run's own 10,000 held-out scenes (MNIST test digits, 0-2 digits),
  * on scenes built differently from the training data (other digit sizes), to check it learned the task.

usage: python benchmarks/accuracy.py [--seeds 0,1,2,3,4] [--parallel 2] [--out FILE] [-- extra air train options]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


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
    return summary


def score_other_scenes(checkpoint: Path, n: int) -> dict:
    from attend_infer_repeat import AIR
    from attend_infer_repeat.scenes import SceneConfig, make_scenes

    model = AIR.load(checkpoint)
    out = {}
    for size in (20, 24, 28, 32):
        scenes = make_scenes("test", n, SceneConfig(digit_size=size, seed=1234))
        r = model.infer(scenes.images)
        out[f"digits_{size}px"] = float((r.counts.numpy() == scenes.counts).mean())
    return out


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (threads are split between them)")
    p.add_argument("--other-n", type=int, default=2000, help="scenes per differently-built test set")
    p.add_argument("--out", default=str(HERE / "results" / "accuracy.json"))
    p.add_argument("--run-root", default=str(HERE / "results" / "accuracy_runs"))
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    threads = max(1, (os.cpu_count() or 1) // a.parallel)
    run_root = Path(a.run_root)
    with ThreadPoolExecutor(a.parallel) as pool:
        runs = list(pool.map(lambda s: run_seed(s, run_root, threads, extra), seeds))
    for r in runs:
        if "error" not in r:
            r["other_scenes_count_acc"] = score_other_scenes(Path(r["run_dir"]) / "last.pt", a.other_n)
    ok = [r for r in runs if "error" not in r]
    accs = [r["held_out_count_acc"] for r in ok]
    result = {
        "benchmark": "accuracy", "command": "air train " + " ".join(extra), "seeds": seeds,
        "parallel_runs": a.parallel, "threads_per_run": threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "processor": platform.processor()},
        "runs": runs,
        "held_out_count_acc_median": float(np.median(accs)) if accs else None,
        "held_out_count_acc_min": min(accs) if accs else None,
        "seeds_reaching_98": sum(a_ >= 0.98 for a_ in accs), "seeds_reaching_99": sum(a_ >= 0.99 for a_ in accs),
        "failed_runs": len(runs) - len(ok),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
