"""Held-out count accuracy against wall-clock training time for the default `air train`, over seeds.

Each seed runs the real command (`air train` with its defaults; evaluation every --eval-every steps on
--eval-size held-out scenes built from MNIST test digits). Time is the trainer's own training clock
(evaluation and data generation excluded, as in the anchor's measurements); the wall-clock minutes of the
whole command are recorded too. Writes JSON (curves, minutes to 95% / 98% / 99% per seed, medians) and a figure
(PNG and SVG) of held-out count accuracy against minutes.

The training clock starts at the first step, so where `air train` compiles its step (the default on CPUs with a C++
compiler) the compile is inside the minutes; by default every seed compiles with an empty TorchInductor cache, as
on a machine that never ran it (`--compile-cache machine` reuses the cache instead).

usage: python benchmarks/time_to_accuracy.py [--seeds 0,1,2] [--eval-every 250] [--compile-cache fresh|machine]
                                             [--out FILE] [-- air train options]
       python benchmarks/time_to_accuracy.py --replot [--out FILE]   (redraw the figure from the JSON)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = (0.95, 0.98, 0.99)


def run_seed(seed: int, run_root: Path, eval_every: int, eval_size: int, extra: list[str],
             fresh_compile_cache: bool = True) -> dict:
    run_dir = run_root / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # each benchmark run starts afresh (air train refuses old runs)
    cmd = [sys.executable, "-m", "attend_infer_repeat.cli", "train", "--seed", str(seed), "--run-dir", str(run_dir),
           "--eval-every", str(eval_every), "--eval-size", str(eval_size), "--no-progress", *extra]
    env = dict(os.environ)
    if fresh_compile_cache:  # compile from nothing, as on a new machine: the minutes include the whole compile
        env["TORCHINDUCTOR_CACHE_DIR"] = str(run_root / f".inductor-cache-seed{seed}")
        shutil.rmtree(env["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if fresh_compile_cache:
        shutil.rmtree(env["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
    if proc.returncode != 0:
        return {"seed": seed, "error": proc.stderr[-2000:]}
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["train_seconds"] / 60, r["count_acc"]) for r in rows if r["kind"] == "eval"]
    reached = {f"minutes_to_{int(100 * t)}": next((m for m, a in curve if a >= t), None) for t in TARGETS}
    return {"seed": seed, "curve_minutes_acc": curve, **reached, "final": summary,
            "wall_minutes": round((time.time() - t0) / 60, 2)}


def plot(result: dict, path: Path) -> None:
    """The figure (PNG and SVG beside it): held-out count accuracy against training minutes, one thin line per
    seed that finished and, over several seeds, their median with a band from the worst to the best seed."""
    import numpy as np

    from attend_infer_repeat.visualise import PLOT_COLOURS, line_plot

    ok = [r for r in result["runs"] if "error" not in r]
    if not ok:
        return
    series = {f"seed {r['seed']}": tuple(zip(*r["curve_minutes_acc"])) for r in ok}
    styles = {label: {"linewidth": 1.0, "alpha": 0.8, "color": PLOT_COLOURS[1 + k % (len(PLOT_COLOURS) - 1)]}
              for k, label in enumerate(series)}
    bands = {}
    if len(ok) > 1:
        # the seeds evaluate at different minutes: compare them where all have started and none has ended, at
        # every minute any of them was evaluated (accuracy read off each seed's line, as drawn)
        curves = [(np.asarray(xs, float), np.asarray(ys, float)) for xs, ys in series.values()]
        lo, hi = max(xs[0] for xs, _ in curves), min(xs[-1] for xs, _ in curves)
        grid = np.unique(np.concatenate([xs[(xs >= lo) & (xs <= hi)] for xs, _ in curves]))
        values = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
        label = f"median of {len(ok)} seeds, band: worst to best"
        series[label] = (grid.tolist(), np.median(values, 0).tolist())
        bands[label] = (grid.tolist(), values.min(0).tolist(), values.max(0).tolist())
        styles[label] = {"color": PLOT_COLOURS[0], "linewidth": 2.2}
    cpus, command = result.get("cpus"), result.get("command", "air train").strip()
    title = "AIR on multi-MNIST: held-out count accuracy against training time"
    if command != "air train":  # not the defaults: say which options, else two figures read the same
        title += f"\n{command}"
    line_plot(series, path, xlabel=f"training minutes (evaluation excluded{f', {cpus}-core CPU' if cpus else ''})",
              ylabel="held-out count accuracy", title=title,
              y_range=(0.3, 1.0), hlines=(0.95, 0.98), hline_label="95% and 98%", percent=True, bands=bands,
              styles=styles, legend_loc="lower right", figsize=(7.2, 4.2), dpi=150)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-size", type=int, default=2000)
    p.add_argument("--out", default=str(HERE / "results" / "time_to_accuracy.json"))
    p.add_argument("--run-root", default=str(HERE / "results" / "time_to_accuracy_runs"))
    p.add_argument("--replot", action="store_true", help="only redraw the figure (PNG and SVG) from the JSON at --out")
    p.add_argument("--compile-cache", choices=("fresh", "machine"), default="fresh",
                   help="fresh (default): every seed compiles its training step from nothing, as on a new machine, "
                   "and the minutes include that; machine: reuse this machine's TorchInductor cache")
    a = p.parse_args(argv)
    if a.replot:
        plot(json.loads(Path(a.out).read_text()), Path(a.out).with_suffix(".png"))
        return
    runs = [run_seed(int(s), Path(a.run_root), a.eval_every, a.eval_size, extra, a.compile_cache == "fresh")
            for s in a.seeds.split(",")]
    ok = [r for r in runs if "error" not in r]

    def median(key):
        vals = [r[key] for r in ok]
        return statistics.median([v if v is not None else float("inf") for v in vals]) if vals else None

    sys.path.insert(0, str(HERE))
    from common import record

    result = {"benchmark": "time_to_accuracy", "command": "air train " + " ".join(extra), **record(),
              "precision": sorted({r["final"]["precision"] for r in ok}),
              "compiled": sorted({r["final"]["compiled"] for r in ok}),
              "eval_every": a.eval_every, "eval_size": a.eval_size, "cpus": os.cpu_count(),
              "compile_cache": a.compile_cache,
              "compile_seconds": [r["final"].get("compile_seconds") for r in ok], "runs": runs,
              **{f"median_minutes_to_{int(100 * t)}": median(f"minutes_to_{int(100 * t)}") for t in TARGETS},
              "median_final_held_out_count_acc": statistics.median([r["final"]["held_out_count_acc"] for r in ok])
              if ok else None}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot(result, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
