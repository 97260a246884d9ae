"""Training throughput with 1 process vs N data-parallel processes (torchrun, DistributedDataParallel).

Runs the real command line both ways on the same global batch and reads images/s from each run's
summary.json: `air train` in one process with all the CPU threads, and `torchrun --nproc_per_node N -m
attend_infer_repeat.cli train` with the threads split between the processes. On a GPU machine pass
--device cuda (one process per GPU). Writes JSON.

usage: python benchmarks/distributed_throughput.py [--processes 2] [--steps 400] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd: list[str], run_dir: Path) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:], "command": " ".join(cmd)}
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"images_per_s": summary["images_per_s"], "processes": summary.get("processes", 1),
            "steps": summary["steps"], "precision": summary["precision"], "command": " ".join(cmd)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(HERE / "results" / "distributed_throughput.json"))
    a = p.parse_args()
    cpus = os.cpu_count() or 1
    common = ["train", "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--n-train", "20000",
              "--n-test", "1000", "--eval-every", str(10 * a.steps), "--checkpoint-every", str(10 * a.steps),
              "--no-progress", "--device", a.device]
    tmp = Path(tempfile.mkdtemp(prefix="air-ddp-bench-"))
    try:
        single = run([sys.executable, "-m", "attend_infer_repeat.cli", *common, "--threads", str(cpus),
                      "--run-dir", str(tmp / "one")], tmp / "one")
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
        multi = run([torchrun, "--nproc_per_node", str(a.processes), "-m", "attend_infer_repeat.cli", *common,
                     "--threads", str(max(1, cpus // a.processes)), "--run-dir", str(tmp / "many")], tmp / "many")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"benchmark": "distributed_throughput", "cpus": cpus, "device": a.device,
              "global_batch": a.batch_size, "one_process": single, f"{a.processes}_processes": multi}
    if "images_per_s" in single and "images_per_s" in multi:
        result["speedup"] = round(multi["images_per_s"] / single["images_per_s"], 2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
