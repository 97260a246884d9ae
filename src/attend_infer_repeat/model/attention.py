"""The spatial transformer (Jaderberg et al., 2015) restricted to AIR's 3-parameter attention.

``z_where = (s, x, y)``: zoom ``s`` (image-to-window) and window centre ``(x, y)`` in normalised image
coordinates. Cropping reads the window with the affine map ``A = [[1/s, 0, x], [0, 1/s, y]]``
(window coordinates -> image coordinates); drawing back uses its inverse ``[[s, 0, -s x], [0, s, -s y]]``
(image coordinates -> window coordinates). Both are exact inverses, so crop-then-place returns the window's
content where it was (up to bilinear resampling).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .compiled_ops import OPAQUE_OPS, affine_grid_op, bilinear_sample_op, compiling, grid_sample


def safe_zoom(s: torch.Tensor, min_zoom: float = 0.1) -> torch.Tensor:
    """|s| floored at ``min_zoom`` with the sign kept: 1/s stays finite for windows of any size."""
    sign = torch.where(s < 0, -torch.ones_like(s), torch.ones_like(s))
    return sign * s.abs().clamp_min(min_zoom)


def crop_theta(z_where: torch.Tensor, min_zoom: float = 0.1) -> torch.Tensor:
    """(B, 3) z_where -> (B, 2, 3) affine matrices mapping window coordinates to image coordinates."""
    s = safe_zoom(z_where[:, 0], min_zoom)
    inv = 1.0 / s
    zero = torch.zeros_like(s)
    return torch.stack([torch.stack([inv, zero, z_where[:, 1]], -1),
                        torch.stack([zero, inv, z_where[:, 2]], -1)], -2)


def place_theta(z_where: torch.Tensor, min_zoom: float = 0.1) -> torch.Tensor:
    """(B, 3) z_where -> (B, 2, 3) affine matrices mapping image coordinates to window coordinates."""
    s = safe_zoom(z_where[:, 0], min_zoom)
    zero = torch.zeros_like(s)
    return torch.stack([torch.stack([s, zero, -s * z_where[:, 1]], -1),
                        torch.stack([zero, s, -s * z_where[:, 2]], -1)], -2)


def crop(images: torch.Tensor, z_where: torch.Tensor, window_size: int, min_zoom: float = 0.1) -> torch.Tensor:
    """Attend: read the window selected by z_where. images (B, 1, H, W) -> glimpses (B, 1, w, w).

    Under bf16 autocast (training on CPUs with native bf16) ``affine_grid``'s internal matrix product runs in
    bf16, so the sampling positions are rounded to bf16. The default's reliability was measured with exactly
    this; a crop with an fp32 grid, tried as a faster replacement, trained worse and was not kept
    (benchmarks/README.md, "what was tried"). Under torch.compile the same ATen kernels run, with the same
    rounding, through two opaque operators (:mod:`.compiled_ops`)."""
    theta = crop_theta(z_where, min_zoom)
    if OPAQUE_OPS and compiling():
        # the matrices in the precision autocast would give affine_grid's product; the grid in the images'
        # precision, as autocast gives grid_sample (which it runs in fp32)
        device = images.device.type
        low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else theta.dtype
        grid = affine_grid_op(theta.to(low), images.size(0), window_size)
        return bilinear_sample_op(images, grid.to(images.dtype))
    grid = F.affine_grid(theta, [images.size(0), 1, window_size, window_size], align_corners=False)
    return grid_sample(images, grid)


def crop_many(images: torch.Tensor, z_where: torch.Tensor, window_size: int, min_zoom: float = 0.1) -> torch.Tensor:
    """:func:`crop` of K windows per image at once: images (B, 1, H, W), z_where (B, K, 3) -> (B, K, 1, w, w).
    The K sampling grids are stacked into one, so the image is read once and never copied per window."""
    b, k = z_where.shape[:2]
    theta = crop_theta(z_where.reshape(b * k, 3), min_zoom)
    grid = F.affine_grid(theta, [b * k, 1, window_size, window_size], align_corners=False)
    out = grid_sample(images, grid.view(b, k * window_size, window_size, 2))  # (B, 1, K * w, w)
    return out.view(b, 1, k, window_size, window_size).transpose(1, 2)


def place(windows: torch.Tensor, z_where: torch.Tensor, image_size: int, min_zoom: float = 0.1) -> torch.Tensor:
    """Draw: put each window back on an empty canvas with the inverse transform.
    windows (B, 1, w, w) -> canvases (B, 1, H, H).

    Computes exactly ``grid_sample(windows, affine_grid(place_theta(z_where)))`` (bilinear, zero padding,
    ``align_corners=False``), but because AIR's transform is axis-aligned the bilinear weights separate:
    ``canvas = K_y @ window @ K_x^T`` with ``K[i, j] = max(0, 1 - |q_i - j|)``, ``q_i`` the window pixel that
    canvas pixel ``i`` maps to. Two small batched matrix products, faster on a CPU than grid_sample, whose
    backward is slow there (benchmarks/README.md; tests check both agree)."""
    centres = (2 * torch.arange(image_size, dtype=windows.dtype, device=windows.device) + 1) / image_size - 1
    return place_at(windows, z_where, centres, centres, min_zoom)


def place_at(windows: torch.Tensor, z_where: torch.Tensor, columns: torch.Tensor, rows: torch.Tensor,
             min_zoom: float = 0.1) -> torch.Tensor:
    """:func:`place` onto chosen canvas pixels only: ``columns`` (P,) or (B, P) and ``rows`` (Q,) or (B, Q),
    the normalised image coordinates of the pixel centres to draw (a patch of the canvas around each window,
    as the grid model draws its objects). windows (B, 1, w, w) -> (B, 1, Q, P)."""
    s = safe_zoom(z_where[:, 0], min_zoom)
    w = windows.size(-1)
    kx = _bilinear_weights(s[:, None] * (columns - z_where[:, 1:2]), w)  # (B, P, w)
    ky = _bilinear_weights(s[:, None] * (rows - z_where[:, 2:3]), w)
    return (ky @ windows[:, 0] @ kx.transpose(1, 2))[:, None]


def _bilinear_weights(coords: torch.Tensor, n: int) -> torch.Tensor:
    """Normalised coordinates (B, m) -> bilinear interpolation weights (B, m, n) over n source pixels."""
    pos = ((coords + 1) * n - 1) / 2  # continuous pixel index (align_corners=False)
    j = torch.arange(n, dtype=coords.dtype, device=coords.device)
    return (1 - (pos[..., None] - j).abs()).clamp_min(0)


def where_to_boxes(z_where: torch.Tensor, image_size: int, min_zoom: float = 0.1) -> torch.Tensor:
    """(..., 3) z_where -> (..., 4) boxes ``x_min, y_min, x_max, y_max`` in pixels of the input image.

    Pixel convention (``align_corners=False``): normalised -1 is the left edge of pixel 0 and +1 the right
    edge of pixel W-1, so a window covering columns 10..37 has x_min = 10, x_max = 38."""
    s = safe_zoom(z_where[..., 0], min_zoom).abs()
    half = 1.0 / s
    to_px = lambda u: (u + 1.0) * 0.5 * image_size  # noqa: E731
    x, y = z_where[..., 1], z_where[..., 2]
    return torch.stack([to_px(x - half), to_px(y - half), to_px(x + half), to_px(y + half)], -1)


def boxes_to_where(boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """Inverse of :func:`where_to_boxes` for square boxes (the side is the mean of width and height)."""
    side = 0.5 * ((boxes[..., 2] - boxes[..., 0]) + (boxes[..., 3] - boxes[..., 1]))
    s = image_size / side
    cx = (boxes[..., 0] + boxes[..., 2]) / image_size - 1.0
    cy = (boxes[..., 1] + boxes[..., 3]) / image_size - 1.0
    return torch.stack([s, cx, cy], -1)
