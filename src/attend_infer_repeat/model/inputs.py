"""Validation of images handed to the public API: every problem is reported as an InputError that says
what was wrong and what to pass instead, before anything reaches torch."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def as_float_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, 1, H, W) -> float (B, 1, H, W) in [0, 1]; float input is passed through."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return x[:, None] if x.dim() == 3 else x


_HOW = "pass a float tensor/array (B, 1, H, W) or (B, H, W) with values in [0, 1], or uint8 values in 0..255"


def as_image_batch(images, image_size: int) -> torch.Tensor:
    """Images in any accepted form -> float32 tensor (B, 1, image_size, image_size) in [0, 1] on the CPU."""
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            images = torch.from_numpy(images.astype(np.float32) / 255.0)
        elif images.dtype.kind == "f":
            images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        elif images.dtype == np.bool_:
            images = torch.from_numpy(images.astype(np.float32))
        else:
            raise InputError(f"images have dtype {images.dtype}; {_HOW}")
    elif isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif images.dtype == torch.bool:
            images = images.float()
        elif not images.is_floating_point():
            raise InputError(f"images have dtype {images.dtype}; {_HOW}")
        images = images.detach().to("cpu", torch.float32)
    else:
        raise InputError(f"images must be a torch tensor or numpy array, got {type(images).__name__}; {_HOW}")

    if images.dim() == 3:
        images = images[:, None]
    elif images.dim() == 2:
        raise InputError(f"got a single image of shape {tuple(images.shape)}; add a batch dimension "
                         f"(images[None]) — {_HOW}")
    elif images.dim() != 4:
        raise InputError(f"images have {images.dim()} dimensions (shape {tuple(images.shape)}); {_HOW}")
    if images.size(1) != 1:
        raise InputError(f"images have {images.size(1)} channels (shape {tuple(images.shape)}); AIR works on "
                         "grey images with 1 channel: convert colour images to grey first")
    if images.shape[-2:] != (image_size, image_size):
        raise InputError(f"images are {images.size(-2)}x{images.size(-1)} but this model was trained on "
                         f"{image_size}x{image_size}; resize or pad them to that size")
    if images.numel() and not torch.isfinite(images).all():
        raise InputError("images contain NaN or infinite values")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise InputError(f"image values must lie in [0, 1] (got min {images.min().item():.3g}, max "
                         f"{images.max().item():.3g}); divide 0..255 images by 255")
    return images.contiguous()
