"""torch.compile support for the spatial transformer, out of the reader's way: the crop's ``affine_grid`` and
``grid_sample`` as two opaque custom operators (torch >= 2.4), so that a compiled training step runs ATen's own
kernels for them, forward and backward, with the same numbers as eager code. :func:`.attention.crop` uses them
only while compiling."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


OPAQUE_OPS = hasattr(torch.library, "custom_op")  # torch >= 2.4

if OPAQUE_OPS:
    # Under torch.compile: grid_sample as one opaque operator, so that the compiled step calls ATen's kernels for it
    # (forward and backward) instead of decomposing it: TorchInductor's decomposed CPU grid_sample was several
    # times slower and took most of what compiling the step gained (benchmarks/README.md, training speed). Eager
    # code calls grid_sample directly (the operator's dispatch costs a little there); both give the same numbers
    # bit for bit (tests/test_compile.py).
    @torch.library.custom_op("attend_infer_repeat::bilinear_sample", mutates_args=())
    def bilinear_sample_op(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return grid_sample(images, grid)

    @bilinear_sample_op.register_fake
    def _(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return images.new_empty(images.size(0), images.size(1), grid.size(1), grid.size(2))

    def _save_inputs(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)
        ctx.images_need_grad = inputs[0].requires_grad

    def bilinear_sample_op_backward(ctx, grad: torch.Tensor):
        images, grid = ctx.saved_tensors
        # interpolation 0 = bilinear, padding 0 = zeros, align_corners False: exactly F.grid_sample's backward
        d_images, d_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad.contiguous(), images, grid, 0, 0, False, [ctx.images_need_grad, True])
        return (d_images if ctx.images_need_grad else None), d_grid

    bilinear_sample_op.register_autograd(bilinear_sample_op_backward, setup_context=_save_inputs)

    # Under torch.compile: the sampling grid from ATen's kernel too. TorchInductor's own kernel for it was much
    # slower than ATen's, and it fused everything theta is computed from into it.
    @torch.library.custom_op("attend_infer_repeat::affine_grid", mutates_args=())
    def affine_grid_op(theta: torch.Tensor, batch: int, size: int) -> torch.Tensor:
        if theta.dtype in (torch.float32, torch.float64):
            return F.affine_grid(theta, [batch, 1, size, size], align_corners=False)
        # low precision: the product in theta's precision from a base grid built in fp32, which is what autocast
        # makes of F.affine_grid on fp32 matrices (affine_grid on bf16 matrices builds its base grid in bf16)
        lin = torch.linspace(-1, 1, size, device=theta.device) * ((size - 1) / size)  # pixel centres
        base = torch.stack(torch.broadcast_tensors(lin[None, :], lin[:, None], torch.ones_like(lin[:, None])), -1)
        base = base.view(1, size * size, 3).to(theta.dtype).expand(batch, -1, -1)
        return torch.bmm(base, theta.transpose(1, 2)).view(batch, size, size, 2)

    @affine_grid_op.register_fake
    def _(theta: torch.Tensor, batch: int, size: int) -> torch.Tensor:
        return theta.new_empty(batch, size, size, 2)

    def _save_size(ctx, inputs, output) -> None:
        ctx.size, ctx.dtype = [inputs[1], 1, inputs[2], inputs[2]], inputs[0].dtype

    def affine_grid_op_backward(ctx, grad: torch.Tensor):
        d_theta = torch.ops.aten.affine_grid_generator_backward(grad.to(ctx.dtype).contiguous(), ctx.size, False)
        return d_theta, None, None

    affine_grid_op.register_autograd(affine_grid_op_backward, setup_context=_save_size)
