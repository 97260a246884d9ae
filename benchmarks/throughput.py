"""Training throughput (images/s) of AIR on this machine, with FLOPs and the machine's measured matmul peak.

For each batch size: the real training step (``Trainer.train_step``: ELBO surrogate, backward, fused Adam)
on multi-MNIST scenes held in memory, timed for at least ``--seconds`` after a warm-up. Also counted: the
model's FLOPs per training image (torch's FlopCounterMode over one forward+backward: matrix products, which
are the arithmetic that matters here), the achieved GFLOP/s, and a measured fp32 (and bf16) matrix-multiply
peak of the same machine with the same threads, so the ratio to the limit is visible.

Every batch size and precision is timed with each ``--compile`` setting (default ``off,auto``: the eager training
loss, ``air train``'s default, and the compiled one of ``air train --compile auto``); ``--compile-ab off,auto`` (the
default) also times the two at batch 64 in interleaved blocks, the fairest comparison on a drifting machine, and
the anchor rounds pair each anchor measurement with one of each.

``--estimators enumerate,nvil`` (the default) compares the z_pres gradient estimators (``ModelConfig.z_pres_estimator``:
the enumerated ELBO, ``air train``'s default, and the score function with its NVIL baseline) at batch 64: one
trainer per setting, timed in interleaved blocks of 10 steps so that the machine's drift affects all of them
alike; the median block is reported.

With ``--anchor PATH/run_pyro.py`` (the Pyro AIR example, see shared/anchors) it also measures the anchor's
images/s in the same run on the same machine, so the speed-up is a ratio, not two numbers from two days; and then
``--anchor-rounds`` (default 3) rounds of our batch-64 step and the anchor back to back, whose median ratio
keeps the machine's drift between the two measurements out of the ratio.

usage: python benchmarks/throughput.py [--batch-sizes 32,64,128,256] [--seconds 20] [--precision fp32,bf16]
                                       [--compile off,auto] [--compile-ab off,auto]
                                       [--threads 2] [--estimators enumerate,nvil]
                                       [--anchor /path/run_pyro.py] [--anchor-rounds 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch._dynamo
from torch.utils.flop_counter import FlopCounterMode

from attend_infer_repeat.config import ModelConfig, RunConfig, TrainConfig
from attend_infer_repeat.data import SceneConfig, make_scenes
from attend_infer_repeat.train import Data, Trainer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import record  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def make_trainer(data: Data, batch_size: int, precision: str, seed: int = 0, train_options: dict | None = None,
                 **model) -> Trainer:
    train = TrainConfig(batch_size=batch_size, precision=precision, seed=seed, lr=1e-3, device="cpu", steps=10 ** 9,
                        **(train_options or {}))
    cfg = RunConfig(model=ModelConfig(**model), train=train)
    return Trainer(cfg, "/nonexistent-never-written", data=data, progress=False, tensorboard=False)


def flops_per_image(data: Data, precision: str) -> float:
    tr = make_trainer(data, 64, precision, train_options={"compile": "off"})  # the counter sees eager operators
    x = data.train_images[:64].float()[:, None] / 255
    with FlopCounterMode(display=False) as counter:
        tr.train_step(x)
    return counter.get_total_flops() / 64


def warmed_up(data: Data, batch_size: int, precision: str, warmup: int = 15,
              compile: str = "auto") -> tuple[Trainer, list[torch.Tensor]]:
    """A trainer that has taken ``warmup`` steps (the first one compiles, where it is compiled), and the 16
    in-memory batches it cycles through."""
    tr = make_trainer(data, batch_size, precision, train_options={"compile": compile})
    batches = [(data.train_images[tr.next_batch()].float()[:, None] / 255) for _ in range(16)]
    for i in range(warmup):
        tr.train_step(batches[i % 16])
    return tr, batches


def timed_steps(tr: Trainer, batches: list[torch.Tensor], seconds: float) -> tuple[int, float]:
    """Training steps for at least ``seconds``: (steps taken, seconds they took)."""
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tr.train_step(batches[steps % 16])
        steps += 1
    return steps, time.perf_counter() - t0


def throughput(data: Data, batch_size: int, precision: str, seconds: float, compile: str = "auto") -> dict:
    tr, batches = warmed_up(data, batch_size, precision, compile=compile)
    steps, dt = timed_steps(tr, batches, seconds)
    return {"batch_size": batch_size, "precision": precision, "compile": compile,
            "compiled": tr.compiled_loss is not None, "compile_seconds": _seconds(tr.compile_seconds),
            "steps": steps, "seconds": round(dt, 2),
            "images_per_s": round(steps * batch_size / dt, 1), "ms_per_step": round(1000 * dt / steps, 2)}


def _seconds(s: float | None) -> float | None:
    return None if s is None else round(s, 1)


def anchor_throughput(script: str, seconds: float, threads: int) -> dict:
    """Run the Pyro AIR example for a short while and read its images/s (training time only)."""
    py = os.environ.get("ANCHOR_PYTHON", "/tmp/anchors_venv/bin/python")
    out = f"/tmp/anchor_throughput_{os.getpid()}.jsonl"
    cmd = [py, "-W", "ignore", script, "--minutes", str(seconds / 60), "--eval-every", "100000",
           "--threads", str(threads), "--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not rows:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return {"images_per_s": rows[-1]["images_per_s"], "steps": rows[-1]["step"], "batch_size": 64,
            "train_seconds": rows[-1]["train_s"], "command": " ".join(cmd)}


def paired_with_anchor(data: Data, script: str, rounds: int, seconds: float, anchor_seconds: float, threads: int,
                       precision: str, compiles: list[str]) -> dict:
    """Rounds of [our batch-64 step for ``seconds`` with each compile setting, then the anchor for
    ``anchor_seconds``], back to back.

    The shared machines drift by 10-25% within minutes, so a ratio of two numbers taken minutes apart can be off
    by as much; pairing each of our measurements with an anchor measurement right after it, and taking the
    median of the per-round ratios, keeps the drift out of the ratio."""
    trainers = {c: warmed_up(data, 64, precision, compile=c) for c in compiles}
    out = []
    for _ in range(rounds):
        ours = {}
        for c, (tr, batches) in trainers.items():
            steps, dt = timed_steps(tr, batches, seconds)
            ours[c] = round(steps * 64 / dt, 1)
        anchor = anchor_throughput(script, anchor_seconds, threads)
        if "images_per_s" not in anchor:
            return {"error": anchor.get("error", "the anchor gave no result")}
        out.append({"anchor_images_per_s": anchor["images_per_s"],
                    **{f"ours_compile_{c}_images_per_s": v for c, v in ours.items()},
                    **{f"ratio_compile_{c}": round(v / anchor["images_per_s"], 2) for c, v in ours.items()}})
        print(json.dumps(out[-1]), flush=True)
    medians = {}
    for c in compiles:
        ratios = sorted(r[f"ratio_compile_{c}"] for r in out)
        medians[f"compile_{c}"] = ratios[len(ratios) // 2]
    return {"batch_size": 64, "precision": precision, "seconds_per_measurement": seconds,
            "anchor_seconds": anchor_seconds,
            "compiled": {c: tr.compiled_loss is not None for c, (tr, _) in trainers.items()}, "rounds": out,
            "median_ratio": medians}


def interleaved_step_seconds(trainers: dict[str, Trainer], batches: list[torch.Tensor],
                             blocks: int) -> dict[str, float]:
    """Median seconds per training step of each trainer, timed in interleaved blocks of 10 steps (after two blocks
    of warm-up), so that the machine's drift affects all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for block in range(blocks + 2):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            for i in range(10):
                tr.train_step(batches[(block * 10 + i) % len(batches)])
            if block >= 2:
                times[name].append((time.perf_counter() - t0) / 10)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def settings_ab(data: Data, field: str, settings: list[str], precision: str, blocks: int = 14) -> dict:
    """images/s at batch 64 for each setting of a ModelConfig or TrainConfig field (z_pres_estimator, compile),
    timed in interleaved blocks of 10 steps (after each has taken its first step, which
    is where a compiled one compiles)."""
    in_train = field in TrainConfig.__dataclass_fields__
    trainers = {b: make_trainer(data, 64, precision, train_options={field: b}) if in_train
                else make_trainer(data, 64, precision, **{field: b}) for b in settings}
    batches = [(data.train_images[trainers[settings[0]].next_batch()].float()[:, None] / 255) for _ in range(16)]
    for tr in trainers.values():
        tr.train_step(batches[0])
    seconds = interleaved_step_seconds(trainers, batches, blocks)
    out = {b: {"images_per_s": round(64 / seconds[b], 1), "ms_per_step": round(1000 * seconds[b], 2)} for b in settings}
    first = out[settings[0]]["images_per_s"]
    for b in settings:
        out[b]["vs_" + settings[0]] = round(out[b]["images_per_s"] / first, 2)
    for b, tr in trainers.items():
        out[b].update(compiled=tr.compiled_loss is not None, compile_seconds=_seconds(tr.compile_seconds))
    return {"field": field, "batch_size": 64, "precision": precision, "blocks_of_10_steps": blocks, "settings": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", default="32,64,128,256")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32 and/or bf16")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per setting (after warm-up)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--estimators", default="enumerate,nvil",
                   help="compare these z_pres_estimator settings at batch 64 (interleaved; '' to skip)")
    p.add_argument("--compile", default="off,auto",
                   help="comma-separated TrainConfig.compile settings to time every batch size and precision with "
                   "(auto: compiled where a C++ compiler is found; off: eager)")
    p.add_argument("--compile-ab", default="off,auto",
                   help="compare these compile settings at batch 64 in interleaved blocks ('' to skip)")
    p.add_argument("--anchor", help="path to shared/anchors/pyro_air/run_pyro.py to measure the anchor too")
    p.add_argument("--anchor-seconds", type=float, default=60.0)
    p.add_argument("--anchor-rounds", type=int, default=3,
                   help="with --anchor: rounds of ours then the anchor back to back at batch 64 (median ratio)")
    p.add_argument("--out", default=str(HERE / "results" / "throughput.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    # one compiled graph per batch size, precision and A/B trainer: more than dynamo's default of 8 per function,
    # beyond which it would silently run the loss eagerly
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    scenes = make_scenes("train", 4096, SceneConfig())
    data = Data(torch.from_numpy(scenes.images), torch.from_numpy(scenes.counts), torch.from_numpy(scenes.images[:64]),
                torch.from_numpy(scenes.counts[:64]))
    precisions = a.precision.split(",")
    result = {"benchmark": "throughput", "threads": a.threads, **record(),
              "model": "defaults: N=3, LSTM 256, z_what 50, window 28, 50x50 images",
              "matmul_peak_gflops": {"fp32": round(matmul_peak(torch.float32), 1)}}
    if "bf16" in precisions:
        result["matmul_peak_gflops"]["bf16"] = round(matmul_peak(torch.bfloat16), 1)
    result["flops_per_training_image"] = {pr: flops_per_image(data, pr) for pr in precisions}
    result["runs"] = []
    for pr in precisions:
        for bs, compile in ((int(b), c) for b in a.batch_sizes.split(",") for c in a.compile.split(",")):
            r = throughput(data, bs, pr, a.seconds, compile)
            r["achieved_gflops"] = round(r["images_per_s"] * result["flops_per_training_image"][pr] / 1e9, 1)
            r["fraction_of_peak"] = round(r["achieved_gflops"] / result["matmul_peak_gflops"][pr], 3)
            print(json.dumps(r), flush=True)
            result["runs"].append(r)
    if a.estimators:
        result["estimator_ab"] = settings_ab(data, "z_pres_estimator", a.estimators.split(","), precisions[-1])
        print(json.dumps(result["estimator_ab"]), flush=True)
    if a.compile_ab:
        result["compile_ab"] = settings_ab(data, "compile", a.compile_ab.split(","), precisions[-1])
        print(json.dumps(result["compile_ab"]), flush=True)
    if a.anchor:
        result["anchor"] = anchor_throughput(a.anchor, a.anchor_seconds, a.threads)
        if "images_per_s" in result["anchor"]:
            result["speedup_vs_anchor_batch64"] = {
                f"{r['precision']}_compile_{r['compile']}":
                    round(r["images_per_s"] / result["anchor"]["images_per_s"], 2)
                for r in result["runs"] if r["batch_size"] == 64}
        if a.anchor_rounds > 0:
            result["paired_with_anchor"] = paired_with_anchor(data, a.anchor, a.anchor_rounds, a.seconds,
                                                              a.anchor_seconds, a.threads, precisions[-1],
                                                              a.compile.split(","))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
