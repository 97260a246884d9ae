"""What both experiments share: writing their files, and training a run or reusing the finished one already
in its folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig
from ..errors import InputError
from ..files import atomic_write
from ..model import AIR
from ..train import Trainer


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _finished(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether ``run_dir`` holds a finished run of ``cfg`` (the thread count, which changes no result, aside)."""
    try:
        saved = RunConfig.from_file(run_dir / "config.json")
        saved.train.threads = cfg.train.threads
        return (run_dir / "summary.json").is_file() and (run_dir / "last.pt").is_file() and saved == cfg
    except (InputError, ValueError, TypeError, AttributeError):  # no run, another kind of file, another version
        return False


def _train_or_reuse(cfg: RunConfig, run_dir: Path, progress: bool, extra_eval=None) -> tuple[Any, dict, bool]:
    """(model, summary, reused): train ``cfg`` into ``run_dir``, or load the finished run already there.
    ``extra_eval(model, step)`` is called at every periodic evaluation of a new run (for learning curves)."""

    if _finished(run_dir, cfg):
        return AIR.load(run_dir / "last.pt"), json.loads((run_dir / "summary.json").read_text()), True

    # a run of another configuration (or an unfinished one) in the way is replaced: the experiment owns its
    # run folders, and the trainer refuses to start afresh over a run's files
    for stale in ("last.pt", "best.pt", "metrics.jsonl", "summary.json", "unseen_count_curve.json",
                  "refined_counts.json"):
        (run_dir / stale).unlink(missing_ok=True)
    trainer = Trainer(cfg, run_dir, progress=progress, tensorboard=False, on_eval=extra_eval)
    summary = trainer.fit()
    if summary.get("interrupted"):
        raise KeyboardInterrupt
    return trainer.model.cpu(), summary, False


def _count_accuracy(model, images: np.ndarray, counts: np.ndarray, **infer) -> tuple[float, list[int]]:
    """Count accuracy and the histogram of predicted counts (0..N); ``infer``: AIR.infer's options."""
    pred = model.infer(images, **infer).counts.numpy()
    hist = np.bincount(pred, minlength=model.config.max_steps + 1)
    return float((pred == counts).mean()) if len(counts) else float("nan"), [int(h) for h in hist]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
