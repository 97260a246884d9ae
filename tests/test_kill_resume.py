"""SIGKILL a real training process at a random moment, resume, and lose nothing."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from attend_infer_repeat.checkpoint import load_checkpoint
from attend_infer_repeat.config import RunConfig, TrainConfig

SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import blob_images
from attend_infer_repeat.config import RunConfig
from attend_infer_repeat.train import Data, Trainer
x, c = blob_images(256, seed=1)
u8 = (x[:, 0] * 255).to(torch.uint8)
cfg = RunConfig.from_dict({cfg!r})
Trainer(cfg, {run!r}, data=Data(u8, c, u8[:64], c[:64]), progress=False, tensorboard=False).fit(resume={resume})
"""


def run_training(cfg: RunConfig, run: Path, resume: bool) -> subprocess.Popen:
    code = SCRIPT.format(tests=str(Path(__file__).parent), cfg=cfg.to_dict(), run=str(run), resume=resume)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_sigkill_at_a_random_moment_then_resume(tiny_config, tmp_path):
    cfg = RunConfig(model=tiny_config, train=TrainConfig(steps=800, batch_size=16, eval_every=50, eval_size=64,
                                                         checkpoint_every=7, log_every=1, threads=1,
                                                         device="cpu"))
    run = tmp_path / "run"
    proc = run_training(cfg, run, resume=False)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.stat().st_size > 2000) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    time.sleep(random.Random(1234).uniform(0.0, 1.5))  # somewhere mid-run: mid-step, mid-log or mid-save
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    saved = load_checkpoint(run / "last.pt")  # never half-written
    assert 0 < saved["step"] < 800

    proc = run_training(cfg, run, resume=True)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line parses: none torn
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == list(range(1, 801)), "training records are missing or duplicated"
    assert load_checkpoint(run / "last.pt")["step"] == 800
    assert not list(run.glob(".*.part")), "a stale temporary file was left behind"
    weights = load_checkpoint(run / "last.pt")["model"].values()
    assert torch.isfinite(torch.cat([v.flatten().float() for v in weights])).all()
