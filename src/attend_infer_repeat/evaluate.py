"""Held-out evaluation: count accuracy and ELBO of a model on a set of scenes."""
from __future__ import annotations

import numpy as np
import torch

from .model import AIR


def as_float_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, 1, H, W) -> float (B, 1, H, W) in [0, 1]; float input is passed through."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return x[:, None] if x.dim() == 3 else x


@torch.no_grad()
def evaluate_counts(model: AIR, images, counts, batch_size: int = 1000, train_step: int = 0,
                    with_elbo: bool = True) -> dict[str, float]:
    """Count accuracy (deterministic inference) and mean single-sample ELBO per image on labelled scenes."""
    images = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    counts = torch.as_tensor(np.asarray(counts)).long()
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct, elbo_sum, n = 0, 0.0, 0
    try:
        for i in range(0, images.size(0), batch_size):
            x = as_float_batch(images[i:i + batch_size]).to(dev)
            q = model.guide(x, deterministic=True)
            correct += int((q.z_pres.sum(1).long().cpu() == counts[i:i + batch_size]).sum())
            if with_elbo:
                elbo_sum += float(model.loss(x, train_step, use_baseline=False).elbo.sum())
            n += x.size(0)
    finally:
        model.train(was_training)
    out = {"count_acc": correct / max(n, 1), "n": n}
    if with_elbo:
        out["elbo"] = elbo_sum / max(n, 1)
    return out
