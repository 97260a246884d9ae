"""SIGKILL a real training process at a random moment, continue it with ``air train --resume`` as a user would,
and end with exactly the run an uninterrupted process trains: the same weights, optimiser state, RNG states,
data order and metrics (wall-clock timings aside). Training on the CPU in one thread is deterministic, so the
comparison is bitwise: a resume that skips restoring the RNG, the data order, the optimiser, the learning-rate
schedule or the best checkpoint ends somewhere else and fails here.

The moment is random on every run (``random.SystemRandom``): a random training step, read from the run's own
metrics, plus a random fraction of a step, so over many runs the kill lands mid-step, mid-log, mid-evaluation and
mid-checkpoint-write. The moment is printed (``-s``) and named in every failure message."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from helpers import blob_images

import attend_infer_repeat
from attend_infer_repeat.checkpoint import load_checkpoint
from attend_infer_repeat.config import RunConfig, TrainConfig

STEPS = 240
CHECKPOINT_EVERY = 7  # frequent saves: a kill often lands inside one
TIMINGS = ("train_seconds", "images_per_s")  # the only fields of a record that may differ between two processes

SCRIPT = """
from attend_infer_repeat.config import RunConfig
from attend_infer_repeat.train import Trainer
Trainer(RunConfig.from_dict({cfg!r}), {run!r}, progress=False, tensorboard=False).fit()
"""


def environment() -> dict:
    """The subprocesses import the same package this test imported (whatever PYTHONPATH says), one thread."""
    src = str(Path(attend_infer_repeat.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def start_training(cfg: RunConfig, run: Path) -> subprocess.Popen:
    """A training process; its stderr goes to RUN.stderr (a file: a pipe nobody reads could fill and block it)."""
    code = SCRIPT.format(cfg=cfg.to_dict(), run=str(run))
    with open(f"{run}.stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=err,
                                env=environment())
    proc.log = Path(f"{run}.stderr")
    return proc


def last_logged_step(metrics: Path) -> int:
    """The newest training step with a complete line in metrics.jsonl (0 before the first)."""
    try:
        lines = metrics.read_bytes().split(b"\n")[:-1]  # the last piece may be a line still being written
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        record = json.loads(line)
        if record["kind"] == "train":
            return record["step"]
    return 0


def records(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # none torn
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def assert_same(a, b, where: str) -> None:
    """Bitwise equality of two checkpoint entries (nested dicts/lists of tensors and plain values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max |diff| {(a.double() - b.double()).abs().max():.3g})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_sigkill_at_a_random_moment_then_resume_gives_the_uninterrupted_run(tiny_config, tmp_path):
    x, _ = blob_images(272, seed=1)
    images = tmp_path / "images.npy"
    np.save(images, (x[:, 0] * 255).to(torch.uint8).numpy())  # the user's own images: what --resume reloads
    cfg = RunConfig(model=tiny_config, train=TrainConfig(
        steps=STEPS, batch_size=16, lr_schedule="cosine", eval_every=40, eval_size=32,
        checkpoint_every=CHECKPOINT_EVERY, log_every=1, threads=1, device="cpu", precision="fp32",
        compile="off", restarts=0, seed=5, dataset="files", data_path=str(images), holdout=0.125))
    reference, run = tmp_path / "reference", tmp_path / "run"

    chance = random.SystemRandom()
    kill_after = chance.randint(CHECKPOINT_EVERY + 1, STEPS - 40)  # a last.pt exists by then
    extra = chance.uniform(0.0, 0.03)  # ... and a random part of the next step (one takes 10-30 ms)
    moment = f"killed {extra * 1000:.1f} ms after step {kill_after} was logged"
    print(f"\n{moment}")

    ref_proc = start_training(cfg, reference)  # the uninterrupted run, alongside
    proc = start_training(cfg, run)
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.time() + 180
        while last_logged_step(metrics) < kill_after:
            assert proc.poll() is None, f"training ended before the kill: {proc.log.read_text()}"
            assert time.time() < deadline, "training did not reach the kill step in time"
            time.sleep(0.002)
        time.sleep(extra)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, moment

        saved = load_checkpoint(run / "last.pt")  # never half-written
        reached = last_logged_step(metrics)  # the steps are fast: the run may have gone on a little before dying
        moment += f"; it had logged step {reached}, last.pt held step {saved['step']}"
        assert CHECKPOINT_EVERY <= saved["step"] <= reached + 1 < STEPS, moment

        # continue as a user would, from the run directory alone
        resumed = subprocess.run([sys.executable, "-m", "attend_infer_repeat.cli", "train", "--resume",
                                  "--run-dir", str(run), "--steps", str(STEPS), "--no-progress"],
                                 capture_output=True, text=True, env=environment(), timeout=300)
        assert resumed.returncode == 0, f"{moment}\n{resumed.stderr}"
        assert ref_proc.wait(timeout=300) == 0, ref_proc.log.read_text()
    finally:
        for p in (proc, ref_proc):  # a failure above leaves no training process behind
            if p.poll() is None:
                p.kill()
                p.wait()

    rows, ref_rows = records(run), records(reference)
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1)), f"{moment}: training records are missing or duplicated"
    for i, (got, want) in enumerate(zip(rows, ref_rows)):  # the first record that differs says where it went wrong
        assert got == want, f"{moment}: metrics record {i} differs from the uninterrupted run's"
    assert len(rows) == len(ref_rows), moment

    for name in ("last.pt", "best.pt"):
        got, want = load_checkpoint(run / name), load_checkpoint(reference / name)
        assert got["step"] == want["step"], f"{moment}: {name}"
        for key in ("model", "optimizer", "rng", "data_order", "best", "skipped_steps", "rollbacks", "lr_scale"):
            assert_same(got[key], want[key], f"{moment}: {name} {key}")
    assert load_checkpoint(run / "last.pt")["step"] == STEPS

    summary, ref_summary = (json.loads((d / "summary.json").read_text()) for d in (run, reference))
    for key in ("steps", "held_out_elbo", "held_out_count_acc", "held_out_n", "best", "skipped_steps", "traps"):
        assert summary[key] == ref_summary[key], f"{moment}: summary {key}"
    assert not list(run.glob(".*.part")), f"{moment}: a stale temporary file was left behind"
    assert RunConfig.from_dict(json.loads((run / "config.json").read_text())) == cfg, "--resume changed the config"
