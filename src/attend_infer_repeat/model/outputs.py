"""What the model hands back: the guide's latents (:class:`GuideOutput`), the objective's terms
(:class:`LossOutput`) and what :meth:`AIR.infer` found in each image (:class:`InferenceResult`, with the boxes of
the ink each object draws, :func:`ink_boxes`)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import ModelConfig

#: A pixel belongs to an object's drawn ink where the object draws at least this intensity (chosen on training
#: scenes: it gives the boxes closest to the digits' ink boxes there).
OBJECT_INK_THRESHOLD = 0.2


def ink_boxes(objects: torch.Tensor, z_where: torch.Tensor, cfg: ModelConfig,
              origin: torch.Tensor | None = None) -> torch.Tensor:
    """The tight box of each drawn object's pixels >= OBJECT_INK_THRESHOLD: objects (B, N, H, W) on the canvas
    -> (B, N, 4) ``x_min, y_min, x_max, y_max`` in pixels (exclusive max, as the scenes' ink boxes). An object
    that draws nothing that bright gets an empty box at its window's centre. ``origin`` (N, 2): each object is
    drawn on a piece of the canvas whose top-left pixel is (x, y) = origin (the grid model's patches)."""
    inked = objects >= OBJECT_INK_THRESHOLD
    size = objects.size(-1)
    idx = torch.arange(size, device=objects.device)

    def extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, N, size) -> first, last + 1
        first = torch.where(mask, idx, size).amin(-1)
        last = torch.where(mask, idx, -1).amax(-1) + 1
        return first.float(), last.float()

    x0, x1 = extent(inked.any(-2))
    y0, y1 = extent(inked.any(-1))
    centre = (z_where[..., 1:] + 1) * cfg.image_size / 2  # normalised -> pixels
    empty = ~inked.flatten(-2).any(-1)
    boxes = torch.stack([x0, y0, x1, y1], -1)
    if origin is not None:
        boxes = boxes + origin.repeat(1, 2).to(boxes)
    return torch.where(empty[..., None], centre.repeat(1, 1, 2).to(boxes), boxes)


@contextmanager
def eval_mode(model: nn.Module):
    """Run a block with ``model`` in eval mode, then put it back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


#: What each guide step proposes: its latents and the posterior parameters they came from.
GUIDE_STEP_KEYS = ("z_pres", "z_pres_logit", "z_where", "z_where_loc", "z_where_std", "z_what", "z_what_loc",
                   "z_what_std")


@dataclass
class GuideOutput:
    """Latents for a batch, one column per step: z_pres (B, N), z_where (B, N, 3), z_what (B, N, D), the
    posterior parameters they came from, and (DAIR only, which draws as it goes) the canvas."""

    z_pres: torch.Tensor
    z_pres_logit: torch.Tensor
    z_where: torch.Tensor
    z_where_loc: torch.Tensor
    z_where_std: torch.Tensor
    z_what: torch.Tensor
    z_what_loc: torch.Tensor
    z_what_std: torch.Tensor
    baseline: torch.Tensor | None = None  # (B, N) NVIL baseline values
    canvas: torch.Tensor | None = None  # (B, 1, H, W), DAIR only
    steps: list[torch.Tensor] | None = None  # canvases after each step, DAIR only
    z_where_raw: torch.Tensor | None = None  # grid model: the sampled (s, u) its z_where posterior is over


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to minimise: -ELBO + score-function surrogate (model and guide)
    baseline_loss: torch.Tensor  # scalar to minimise: the baseline's regression loss
    elbo: torch.Tensor  # (B,) per-image ELBO, detached
    counts: torch.Tensor  # (B,) sampled number of objects
    terms: dict[str, torch.Tensor]  # per-image means of the ELBO's parts, detached, for logging
    per_image_loss: torch.Tensor | None = None  # (B,) what ``loss`` is the mean of (with its gradient)
    skipped: bool = False  # set by the trainer: the update was skipped (non-finite loss or gradient)


@dataclass
class InferenceResult:
    """What :meth:`AIR.infer` found in each image. Box coordinates are pixels of the input image."""

    counts: torch.Tensor  # (B,) long
    boxes: list[torch.Tensor]  # B tensors (n_i, 4): each object's window, x_min, y_min, x_max, y_max
    object_boxes: list[torch.Tensor]  # B tensors (n_i, 4): the tight box of what each object draws (ink_boxes)
    z_what: list[torch.Tensor]  # B tensors (n_i, D)
    z_where: list[torch.Tensor]  # B tensors (n_i, 3): zoom s, centre x, centre y (normalised)
    pres_probs: torch.Tensor  # (B, N) q(z_pres_i = 1 | z_pres_{i-1} = 1), every step
    reconstruction: torch.Tensor  # (B, 1, H, W) the canvas drawn from the inferred objects
    step_windows: torch.Tensor  # (B, N, 1, w, w) each step's reconstructed window (zero if absent)
    step_boxes: torch.Tensor  # (B, N, 4) each step's window as a box, present or not
    z_pres: torch.Tensor  # (B, N) 0/1
    # B tensors (n_i,): the probability under q that each found object is there (AIR: that its step and every
    # step before it are present; the grid model: its cell's presence probability), for ranking detections
    object_scores: list[torch.Tensor] | None = None
