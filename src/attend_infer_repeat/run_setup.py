"""What a training run is built from around its loop (:mod:`.train`): the data as in-memory tensors, the
optimiser, the seed of each restart, the test of a step's gradients, what "best" means, the run directory."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data.datasets import run_data
from .errors import CheckpointError, InputError
from .model import AIR


def attempt_seed(seed: int, attempt: int) -> int:
    """The initialisation seed of a run's attempt after ``attempt`` restarts (0: the run's own seed)."""
    return seed + 100_003 * attempt


@dataclass
class Data:
    """Training and held-out scenes as in-memory tensors (uint8 images, int64 counts; counts are None for
    unlabelled images, which train the same way but have no count accuracy)."""

    train_images: torch.Tensor
    train_counts: torch.Tensor | None
    test_images: torch.Tensor
    test_counts: torch.Tensor | None


def load_data(cfg: RunConfig) -> Data:
    """The run's data set (``cfg.train.dataset``, see data/datasets.py): generated scenes (multi-MNIST by default,
    built from real MNIST on first use and cached), or the user's own images with a held-out part."""
    def tensors(part):
        if hasattr(part, "counts"):
            return torch.from_numpy(part.images), torch.from_numpy(part.counts).long()
        return torch.from_numpy(np.ascontiguousarray(part)), None

    train, test = run_data(cfg)
    return Data(*tensors(train), *tensors(test))


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite, from one sum per tensor.

    A sum is NaN or infinite whenever any element is (NaN propagates; +inf and -inf together give NaN), so this
    never lets a non-finite gradient through. A sum of finite values that overflows fp32 also reads as non-finite:
    such a step is skipped too. One pass over the gradients: 1.0 against 1.6 ms for their norms per batch-64 CPU
    step (``benchmarks/step_breakdown.py``, alternating on the same gradients)."""
    if not tensors:
        return True
    return bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in tensors]).sum()))


def make_optimizer(model: AIR, cfg: RunConfig) -> torch.optim.Optimizer:
    """Adam with two parameter groups: model + guide at ``lr``, the NVIL baseline at ``baseline_lr``."""
    baseline = [p for n, p in model.named_parameters() if n.startswith("baseline.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("baseline.")]
    groups = [{"params": rest, "lr": cfg.train.lr, "name": "model"}]
    if baseline:  # the score-function estimator's baseline (the enumerated ELBO has none)
        groups.append({"params": baseline, "lr": cfg.train.baseline_lr, "name": "baseline"})
    # The fused kernel does the same update in one pass over memory: with ~6M parameters, most of them in
    # the two 2,500-pixel input projections, that is a large share of a CPU step (benchmarks/README.md).
    device = next(model.parameters()).device
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.Adam(groups, fused=True)
        except (RuntimeError, TypeError):  # an older torch without fused CPU Adam
            pass
    return torch.optim.Adam(groups)


def _rank_key(ev: dict) -> tuple[float, float]:
    """What "best" means: held-out count accuracy, then ELBO (the ELBO alone where images have no counts)."""
    acc, elbo = ev["count_acc"], ev["elbo"]
    if elbo != elbo or (acc is not None and acc != acc):  # a diverged evaluation never replaces a good best.pt
        return (-2.0, -math.inf)
    return (-1.0 if acc is None else acc, elbo)


def best_without_last(run_dir: Path) -> CheckpointError:
    """The error for a run directory that holds best.pt but no last.pt: what still works, and what to do."""
    return CheckpointError(f"{run_dir} holds best.pt but no last.pt, so its run cannot be continued (last.pt holds "
                           "the optimiser and RNG state); best.pt still works with 'air eval', 'air infer' and 'air "
                           "serve'. To train, choose another --run-dir (or move best.pt away)")


def prepare_run_dir(run_dir: Path, resume: bool, is_main: bool) -> None:
    """Create ``run_dir``, or refuse one that holds another run (unless resuming it) or a best.pt alone; the first
    process deletes the temporary files of writes a killed process never finished."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the run directory {run_dir}: {e.strerror or e}; choose "
                              "a writable folder with --run-dir") from e
    existing = [n for n in ("last.pt", "metrics.jsonl", "best.pt") if (run_dir / n).exists()]
    if "best.pt" in existing and "last.pt" not in existing:
        raise best_without_last(run_dir)
    if existing and not resume:  # never mix two runs' curves or overwrite a run's checkpoints
        raise InputError(f"{run_dir} already holds a run ({', '.join(existing)}): continue it with "
                         "--resume, or start a new run in another --run-dir (or delete that folder first)")
    if is_main:  # only the first process writes, so only it can have left them
        for stale in run_dir.glob(".*.part"):
            stale.unlink(missing_ok=True)


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("air-%Y%m%d-%H%M%S")
