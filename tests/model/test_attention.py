import torch

from attend_infer_repeat.model import attention


def digit_like(size=28):
    """A known 'digit': a ring with a bar, smooth enough for bilinear resampling."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r = (xx ** 2 + yy ** 2).sqrt()
    img = torch.exp(-((r - 0.6) / 0.15) ** 2) + torch.exp(-(xx / 0.15) ** 2) * (yy.abs() < 0.6)
    return img.clamp(0, 1)[None, None]


def test_place_then_crop_returns_the_window():
    """Draw a known digit on the canvas with the inverse transform, crop it back with the forward one."""
    window = digit_like(28)
    z_where = torch.tensor([[2.0, 0.3, -0.2]])  # a 25 px window right of and above the centre
    canvas = attention.place(window, z_where, 50)
    back = attention.crop(canvas, z_where, 28)
    assert canvas.shape == (1, 1, 50, 50) and back.shape == (1, 1, 28, 28)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))  # borders see bilinear zero-padding
    assert (back[inner] - window[inner]).abs().mean() < 0.03
    # the mass lands where the box says
    box = attention.where_to_boxes(z_where, 50)[0]
    assert torch.allclose(box, torch.tensor([25 * (1 + 0.3 - 0.5), 25 * (1 - 0.2 - 0.5),
                                             25 * (1 + 0.3 + 0.5), 25 * (1 - 0.2 + 0.5)]))
    x0, y0, x1, y1 = [int(round(v)) for v in box.tolist()]
    inside = canvas[0, 0, y0:y1, x0:x1].sum()
    assert inside / canvas.sum() > 0.99


def test_crop_of_whole_image_at_zoom_one_is_resampling():
    img = digit_like(50)
    crop = attention.crop(img, torch.tensor([[1.0, 0.0, 0.0]]), 50)
    assert torch.allclose(crop, img, atol=1e-5)


def test_boxes_round_trip():
    z = torch.tensor([[2.5, -0.4, 0.1], [1.5, 0.0, 0.7]])
    assert torch.allclose(attention.boxes_to_where(attention.where_to_boxes(z, 50), 50), z, atol=1e-5)


def test_zoom_near_zero_or_negative_is_finite():
    img = digit_like(50)
    for s in (0.0, 1e-12, -1e-12, -2.0):
        z = torch.tensor([[s, 0.1, 0.1]], requires_grad=True)
        out = attention.crop(img, z, 28).sum() + attention.place(digit_like(28), z, 50).sum()
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(z.grad).all()
        assert torch.isfinite(attention.where_to_boxes(z.detach(), 50)).all()


def test_separable_place_equals_grid_sample_forward_and_backward():
    """place() uses separable bilinear weights; it must equal affine_grid + grid_sample exactly."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    win = torch.rand(16, 1, 28, 28, generator=g, requires_grad=True)
    zw = torch.stack([1.5 + 2 * torch.rand(16, generator=g), torch.rand(16, generator=g) * 2 - 1,
                      torch.rand(16, generator=g) * 2 - 1], 1)
    zw[0, 0] = -2.5  # a mirrored window
    z1, z2 = zw.clone().requires_grad_(), zw.clone().requires_grad_()
    grid = F.affine_grid(attention.place_theta(z1), [16, 1, 50, 50], align_corners=False)
    ref = F.grid_sample(win, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    new = attention.place(win, z2, 50)
    assert torch.allclose(ref, new, atol=1e-5)
    weights = torch.randn(ref.shape, generator=g)
    g_ref = torch.autograd.grad((ref * weights).sum(), [win, z1])
    g_new = torch.autograd.grad((new * weights).sum(), [win, z2])
    for a, b in zip(g_ref, g_new):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)


def test_crop_then_place_round_trip_on_a_placed_digit():
    """A digit drawn on a 50x50 canvas, cropped with the window that frames it and drawn back with the
    inverse transform, reappears where it was."""
    digit = digit_like(28)
    canvas = torch.zeros(1, 1, 50, 50)
    canvas[0, 0, 12:40, 5:33] = digit[0, 0]  # frame box x 5..33, y 12..40
    z_where = attention.boxes_to_where(torch.tensor([[5.0, 12.0, 33.0, 40.0]]), 50)
    glimpse = attention.crop(canvas, z_where, 28)
    assert (glimpse - digit).abs().max() < 1e-4  # the window is exactly the digit's frame
    back = attention.place(glimpse, z_where, 50)
    assert (back - canvas).abs().max() < 1e-4
