"""torch.compile of the training loss (``TrainConfig.compile``): it computes what the eager loss computes, training
with it works end to end, and where compiling is impossible the trainer says so and trains eagerly (or, with
``compile on``, stops with a clear error).

Compiling takes 10-30 s per model shape on 2 cores, so these tests share one tiny model shape (TorchInductor's
cache makes the later compiles of the same graph quick) and the rest of the suite trains eagerly (conftest.py)."""
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import params, tiny_data, tiny_run

from attend_infer_repeat import AIRError, InputError
from attend_infer_repeat.config import TrainConfig
from attend_infer_repeat.model import attention, compiled_ops
from attend_infer_repeat.runtime import cxx_compiler_found
from attend_infer_repeat.train import Trainer

needs_compiler = pytest.mark.skipif(not cxx_compiler_found(), reason="TorchInductor needs a C++ compiler")


def gradients(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def loss_and_gradients(trainer, x, seed):
    """One training loss and its gradients at the trainer's step, with the random draws of ``seed``."""
    trainer.model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with trainer.autocast():
        out = trainer.loss(x)
        total = out.loss + out.baseline_loss
    total.backward()
    return out, total.detach(), gradients(trainer.model)


@needs_compiler
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-4), ("bf16", 5e-2)])
def test_the_compiled_loss_computes_the_eager_loss_and_gradients(tiny_config, tmp_path, precision, tolerance):
    """Same weights, same batch, same random draws (the compiled loss draws from torch's generator, as eager code
    does): the same ELBO, surrogate and gradients, to fp32 rounding (bf16: to the rounding of bf16 products, which
    the compiled kernels keep in fp32 between fused operations where eager code rounds each one)."""
    data = tiny_data()
    x = data.train_images[:16].float()[:, None] / 255
    eager = Trainer(tiny_run(tiny_config, precision=precision, compile="off"), tmp_path / "e", data=data,
                    progress=False)
    compiled = Trainer(tiny_run(tiny_config, precision=precision, compile="on"), tmp_path / "c", data=data,
                       progress=False)
    assert eager.compiled_loss is None and compiled.compiled_loss is not None
    assert torch.equal(params(eager.model), params(compiled.model))
    out_e, total_e, grads_e = loss_and_gradients(eager, x, seed=7)
    out_c, total_c, grads_c = loss_and_gradients(compiled, x, seed=7)
    assert compiled.compiled_loss is not None  # it compiled and ran, no fallback
    assert torch.equal(out_e.counts, out_c.counts)  # the same z_pres draws
    assert torch.allclose(out_c.elbo, out_e.elbo, rtol=tolerance / 10, atol=1e-3)
    assert torch.allclose(total_c, total_e, rtol=tolerance, atol=1e-3)
    assert grads_e.keys() == grads_c.keys() and len(grads_e) == len(list(eager.model.parameters()))
    for name, g in grads_e.items():
        scale = g.norm().clamp_min(1e-6)
        assert (grads_c[name] - g).norm() / scale <= tolerance, name


@needs_compiler
def test_a_compiled_run_trains_checkpoints_and_says_how_long_compiling_took(tiny_config, tmp_path, capsys):
    data = tiny_data()
    tr = Trainer(tiny_run(tiny_config, steps=4, compile="auto"), tmp_path, data=data, progress=True)
    assert tr.compiled_loss is not None  # auto compiles on a CPU with a compiler
    before = params(tr.model).clone()
    summary = tr.fit()
    assert "compiling the training step" in capsys.readouterr().err
    # (the seconds may be a few hundredths: the compiled graph is reused from another test's trainer)
    assert summary["compiled"] and summary["compile_seconds"] is not None and summary["steps"] == 4
    assert tr.skipped_steps == 0 and not torch.equal(params(tr.model), before)
    assert summary["held_out_count_acc"] is not None
    # the checkpoint holds plain weights (no compiler wrapper names) and the setting it ran with
    from attend_infer_repeat import AIR
    from attend_infer_repeat.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "last.pt")["config"]["train"]["compile"] == "auto"
    assert torch.equal(params(AIR.load(tmp_path / "last.pt")), params(tr.model))


@needs_compiler
def test_the_compiled_crop_is_eager_crop(tiny_config):
    """Under torch.compile the glimpse comes from ATen's affine_grid and grid_sample called as opaque operators
    (TorchInductor's own versions of them were ~10x slower on a CPU): the same glimpses and gradients."""
    torch.manual_seed(0)
    images = torch.rand(8, 1, 20, 20, requires_grad=True)
    z_where = (torch.tensor([2.0, 0.0, 0.0]) + 0.4 * torch.randn(8, 3)).requires_grad_()
    compiled = torch.compile(attention.crop, dynamic=False)
    for precision in ("fp32", "bf16"):
        results = []
        for crop in (attention.crop, compiled):
            images.grad = z_where.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                glimpse = crop(images, z_where, 8, 0.1)
            (glimpse * torch.linspace(-1, 1, glimpse.numel()).view_as(glimpse)).sum().backward()
            results.append((glimpse.detach(), images.grad.clone(), z_where.grad.clone()))
        # bf16: the glimpses agree to fp32 rounding; the zoom's gradient to bf16 rounding (0.4%), since the compiled
        # code keeps in fp32 a sum that eager autocast code rounds to bf16
        tol = 1e-5 if precision == "fp32" else 1e-2
        for eager_t, compiled_t in zip(*results):
            assert torch.allclose(compiled_t, eager_t, rtol=tol, atol=tol), precision
        assert torch.allclose(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)


def test_the_opaque_crop_operators_are_bit_identical_to_eager_crop():
    """The operators the compiled crop uses give exactly eager crop's glimpses and gradients, with and without
    bf16 autocast (called here without compiling, which runs the same kernels)."""
    if not compiled_ops.OPAQUE_OPS:
        pytest.skip("torch without torch.library.custom_op: the compiled crop is eager crop")
    torch.manual_seed(0)
    images = torch.rand(16, 1, 50, 50, requires_grad=True)
    z_where = (torch.tensor([3.0, 0.0, 0.0]) + 0.5 * torch.randn(16, 3)).requires_grad_()

    def opaque(images, z_where):  # the compiled branch of attention.crop
        theta = attention.crop_theta(z_where, 0.1)
        low = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else theta.dtype
        grid = compiled_ops.affine_grid_op(theta.to(low), images.size(0), 28)
        return compiled_ops.bilinear_sample_op(images, grid.to(images.dtype))

    weights = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for autocast in (False, True):
        results = []
        for crop in (lambda a, b: attention.crop(a, b, 28, 0.1), opaque):
            images.grad = z_where.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                glimpse = crop(images, z_where)
            (glimpse * weights).sum().backward()
            results.append((glimpse.detach(), images.grad.clone(), z_where.grad.clone()))
        for eager_t, opaque_t in zip(*results):
            assert torch.equal(opaque_t, eager_t), f"autocast={autocast}"
    # and eager crop is plain grid_sample on affine_grid
    with torch.no_grad():
        theta = attention.crop_theta(z_where, 0.1)
        grid = F.affine_grid(theta, [16, 1, 28, 28], align_corners=False)
        assert torch.equal(attention.crop(images, z_where, 28, 0.1), F.grid_sample(images, grid, align_corners=False))


@needs_compiler
def test_when_compiling_fails_auto_trains_eagerly_and_on_stops_with_the_reason(tiny_config, tmp_path, monkeypatch,
                                                                               capsys):
    """A real compiler failure: TorchInductor pointed at a C++ compiler that does not exist (and fresh caches, so
    nothing compiled before can be reused)."""
    import torch._dynamo
    import torch._inductor.config as inductor

    torch._dynamo.reset()  # forget the graphs the tests above compiled for this model shape

    monkeypatch.setattr(inductor.cpp, "cxx", (str(tmp_path / "no-such-g++"),))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))
    data = tiny_data()
    tr = Trainer(tiny_run(tiny_config, steps=2, compile="auto"), tmp_path / "auto", data=data, progress=False)
    assert tr.compiled_loss is not None
    before = params(tr.model).clone()
    x = data.train_images[:16].float()[:, None] / 255
    out = tr.train_step(x)
    err = capsys.readouterr().err
    assert "torch.compile failed" in err and "training without it" in err
    assert tr.compiled_loss is None and tr.compile_seconds is None  # eager from now on
    assert not out.skipped and tr.step == 1 and not torch.equal(params(tr.model), before)
    tr.train_step(x)
    assert tr.step == 2

    strict = Trainer(tiny_run(tiny_config, steps=2, compile="on"), tmp_path / "on", data=data, progress=False)
    with pytest.raises(AIRError, match="--compile on: torch.compile failed.*--compile off"):
        strict.train_step(x)


def test_without_a_compiler_auto_trains_eagerly_and_says_why(tiny_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++, clang++ or c++
    monkeypatch.delenv("CXX", raising=False)
    assert not cxx_compiler_found()
    tr = Trainer(tiny_run(tiny_config, compile="auto"), tmp_path / "run", data=tiny_data(), progress=True)
    assert tr.compiled_loss is None
    assert "no C++ compiler found" in capsys.readouterr().err
    assert tr.train_step(tiny_data().train_images[:16].float()[:, None] / 255).loss.isfinite()
    monkeypatch.setenv("CXX", sys.executable)  # any executable named by $CXX counts (TorchInductor tries it)
    assert cxx_compiler_found()


def test_bad_compile_settings_are_clear_errors(monkeypatch):
    monkeypatch.delenv("AIR_COMPILE")
    assert TrainConfig().compile == "auto"  # compiled where it can be, by default
    # a run saved before the option existed trained eagerly, and resumes so (exactly where it stopped)
    from attend_infer_repeat.config import RunConfig
    old = RunConfig().to_dict()
    del old["train"]["compile"]
    assert RunConfig.from_dict(old).train.compile == "off"
    assert RunConfig.from_dict(RunConfig().to_dict()).train.compile == "auto"
    with pytest.raises(InputError, match="compile .* must be auto, on or off, got 'fast'"):
        TrainConfig(compile="fast")
    monkeypatch.setenv("AIR_COMPILE", "sometimes")
    with pytest.raises(InputError, match="AIR_COMPILE"):
        TrainConfig()
    monkeypatch.setenv("AIR_COMPILE", "on")
    assert TrainConfig().compile == "on"  # the environment sets the default, an explicit setting wins
    assert TrainConfig(compile="off").compile == "off"


def test_the_loss_given_the_prior_of_a_step_is_the_loss_at_that_step(tiny_config):
    """The trainer hands the loss the prior's probabilities as a tensor (a step number that changes every step
    would make a compiled loss recompile): with an annealed geometric prior, the same ELBO as the loss at that step."""
    from dataclasses import replace

    from attend_infer_repeat import AIR
    model = AIR(replace(tiny_config, z_pres_prior="geometric", z_pres_anneal_steps=10))
    x = torch.rand(8, 1, 20, 20)
    torch.manual_seed(3)
    at_step = model.loss(x, train_step=7)
    torch.manual_seed(3)
    given = model.loss(x, z_pres_prior=model.prior(7))
    torch.manual_seed(3)
    at_start = model.loss(x, train_step=0)
    assert torch.equal(given.elbo, at_step.elbo) and torch.equal(given.loss, at_step.loss)
    assert not torch.equal(at_start.elbo, at_step.elbo)  # the prior does change over those steps
