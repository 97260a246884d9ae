import numpy as np
import pytest
import torch
from helpers import blob_images

from attend_infer_repeat import AIR
from attend_infer_repeat.config import ModelConfig
from attend_infer_repeat.errors import InputError
from attend_infer_repeat.model import GuideOutput
from attend_infer_repeat.model.objective import count_log_probs


def fixed_trace(model: AIR, b: int, z_pres: list[float], seed: int = 0) -> GuideOutput:
    """A hand-made guide output with the given z_pres for every image and random other latents."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    n, d = cfg.max_steps, cfg.z_what_dim
    where_loc = model.where_prior_loc + 0.1 * torch.randn(b, n, 3, generator=g)
    what_loc = torch.randn(b, n, d, generator=g)
    return GuideOutput(
        z_pres=torch.tensor(z_pres).expand(b, n).clone(), z_pres_logit=torch.randn(b, n, generator=g),
        z_where=where_loc.clone(), z_where_loc=where_loc, z_where_std=torch.full((b, n, 3), 0.1),
        z_what=what_loc.clone(), z_what_loc=what_loc, z_what_std=torch.full((b, n, d), 0.5),
        baseline=torch.zeros(b, n))


@pytest.mark.parametrize("estimator", ["enumerate", "nvil"])
@pytest.mark.parametrize("dair", [False, True])
def test_guide_shapes_and_z_pres_is_a_run_of_ones(tiny_config, dair, estimator):
    cfg = ModelConfig(**{**tiny_config.__dict__, "dair": dair, "max_steps": 4, "z_pres_estimator": estimator})
    model = AIR(cfg)
    x, _ = blob_images(32)
    q = model.guide(x, with_baseline=True)
    assert q.z_pres.shape == (32, 4) and q.z_where.shape == (32, 4, 3) and q.z_what.shape == (32, 4, 4)
    # only the score-function estimator has (and needs) a baseline
    assert q.baseline.shape == (32, 4) if estimator == "nvil" else q.baseline is None
    # once 0, always 0
    assert (q.z_pres[:, 1:] <= q.z_pres[:, :-1]).all()
    out = model.loss(x)
    assert out.elbo.shape == (32,) and torch.isfinite(out.loss) and torch.isfinite(out.baseline_loss)


def test_nothing_after_the_first_absent_object_contributes(tiny_config):
    model = AIR(tiny_config)
    x, _ = blob_images(8)
    q = fixed_trace(model, 8, [1.0, 0.0, 0.0])
    base = model.objective(x, q).elbo
    # change everything about steps 2 and 3: z_where, z_what and their posteriors
    q2 = fixed_trace(model, 8, [1.0, 0.0, 0.0], seed=1)
    for name in ("z_where", "z_where_loc", "z_what", "z_what_loc"):
        t = getattr(q2, name)
        t[:, 0] = getattr(q, name)[:, 0]
    q2.z_pres_logit[:, :2] = q.z_pres_logit[:, :2]  # step 2's z_pres KL counts (step 1 was present) ...
    q2.z_where_std[:, 1:] = 3.0
    assert torch.allclose(model.objective(x, q2).elbo, base)
    # ... but step 3's does not: z_pres_2 = 0 forced it
    q2.z_pres_logit[:, 2] = 5.0
    assert torch.allclose(model.objective(x, q2).elbo, base)
    q2.z_pres_logit[:, 1] = 5.0
    assert not torch.allclose(model.objective(x, q2).elbo, base)


def test_absent_objects_draw_nothing(tiny_config):
    model = AIR(tiny_config)
    q = fixed_trace(model, 4, [0.0, 0.0, 0.0])
    canvas, _ = model.render(q.z_what, q.z_where, q.z_pres)
    assert canvas.abs().max() == 0


def test_gradients_reach_every_parameter_group(tiny_config):
    """After the first update (the predictor's last layer starts at zero weights, so on step 0 only it
    learns), every parameter of model, guide and baseline receives a finite, non-zero gradient."""
    from attend_infer_repeat.config import RunConfig
    from attend_infer_repeat.run_setup import make_optimizer

    model = AIR(tiny_config)
    opt = make_optimizer(model, RunConfig(model=tiny_config))
    x, _ = blob_images(64)
    for _ in range(2):
        opt.zero_grad()
        out = model.loss(x)
        (out.loss + out.baseline_loss).backward()
        if _ == 0:
            opt.step()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("dair", [False, True])
def test_baseline_trains_only_on_its_own_loss_and_is_used_by_the_guide(tiny_config, dair):
    model = AIR(ModelConfig(**{**tiny_config.__dict__, "dair": dair, "z_pres_estimator": "nvil"}))
    x, _ = blob_images(64)

    def grads(loss_name, bias):
        model.zero_grad()
        with torch.no_grad():
            model.baseline.head.last.bias.fill_(bias)
        torch.manual_seed(3)
        out = model.loss(x)
        getattr(out, loss_name).backward()
        return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}, out

    g_model, out0 = grads("loss", 0.0)
    # the model/guide loss sends no gradient into the baseline ...
    assert all(g is None or g.abs().sum() == 0 for n, g in g_model.items() if n.startswith("baseline."))
    # ... the baseline's loss reaches only the baseline
    g_bl, _ = grads("baseline_loss", 0.0)
    assert all(g is None or g.abs().sum() == 0 for n, g in g_bl.items() if not n.startswith("baseline."))
    assert all(g is not None and g.abs().sum() > 0 for n, g in g_bl.items() if n.startswith("baseline."))
    # the baseline's value changes the z_pres gradient (it is used), not the ELBO
    g_shift, out1 = grads("loss", 100.0)
    assert torch.allclose(out0.elbo, out1.elbo)
    assert not torch.allclose(g_model["predict.net.2.bias"], g_shift["predict.net.2.bias"])
    # the decoder's gradient comes from the reparameterised ELBO only: unaffected by the baseline
    assert torch.allclose(g_model["decoder.net.2.bias"], g_shift["decoder.net.2.bias"], atol=1e-5)


def test_no_nan_when_probabilities_saturate(tiny_config):
    model = AIR(tiny_config)
    with torch.no_grad():
        model.predict.net.last.bias[0] = 1e4  # z_pres probability exactly 1 in float32
    x, _ = blob_images(16)
    out = model.loss(x)
    (out.loss + out.baseline_loss).backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sample_prior(tiny_config):
    model = AIR(tiny_config)
    images, z_pres, boxes = model.sample_prior(10, num_objects=2)
    assert images.shape == (10, 1, 20, 20) and (z_pres.sum(1) == 2).all() and boxes.shape == (10, 3, 4)
    with pytest.raises(InputError):
        model.sample_prior(2, num_objects=7)


# ------------------------------------------------------------------------------------------------ infer
def test_infer_contract(tiny_config):
    model = AIR(tiny_config)
    x, _ = blob_images(12)
    r = model.infer(x)
    assert r.counts.dtype == torch.long and r.counts.shape == (12,)
    assert len(r.boxes) == 12 and len(r.z_what) == 12
    for c, b, w in zip(r.counts, r.boxes, r.z_what):
        assert b.shape == (int(c), 4) and w.shape == (int(c), 4)
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # deterministic, the same for (B, H, W), uint8 numpy, and in small batches; and the mode is restored
    model.train()
    r2 = model.infer((x[:, 0].numpy() * 255).round().astype(np.uint8), batch_size=5)
    assert model.training
    assert torch.equal(model.infer(x[:, 0]).counts, r.counts)
    assert torch.equal(r2.counts, r.counts)


@pytest.mark.parametrize("bad, message", [
    (torch.rand(2, 20, 20).double() * 2, "[0, 1]"),
    (torch.full((2, 1, 20, 20), float("nan")), "NaN"),
    (torch.rand(2, 3, 20, 20), "channels"),
    (torch.rand(2, 1, 28, 28), "20x20"),
    (torch.rand(20, 20), "batch dimension"),
    (torch.rand(1, 1, 1, 20, 20), "dimensions"),
    (torch.randint(0, 2, (2, 20, 20)), "dtype"),
    (np.zeros((2, 20, 20), dtype=np.int32), "dtype"),
    ([[0.0]], "tensor or numpy"),
])
def test_infer_rejects_bad_input_clearly(tiny_config, bad, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        AIR(tiny_config).infer(bad)


def test_infer_on_empty_batch(tiny_config):
    r = AIR(tiny_config).infer(torch.zeros(0, 20, 20))
    assert r.counts.shape == (0,) and r.boxes == []


@pytest.mark.parametrize("options", [{"likelihood": "bernoulli"}, {"z_pres_prior": "geometric"},
                                     {"dair": True, "likelihood": "bernoulli"}, {"dair": True, "dair_memory": False},
                                     {"composition": "max"}, {"dair": True, "composition": "max"}])
def test_variants_give_finite_loss_and_gradients(tiny_config, options):
    model = AIR(ModelConfig(**{**tiny_config.__dict__, **options}))
    x, _ = blob_images(16)
    out = model.loss(x, train_step=10)
    (out.loss + out.baseline_loss).backward()
    assert torch.isfinite(out.elbo).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if options.get("likelihood") == "bernoulli":  # a Bernoulli log-likelihood is never positive
        assert (out.terms["log_lik"] <= 0).all()


def test_memoryless_dair_steps_are_one_function_of_the_residual(tiny_config):
    """dair_memory=False: every step starts from the LSTM's initial state with no previous latents, so two steps
    that see the same residual propose the same z_pres, z_where and z_what; with memory (the paper's) they do not."""
    import dataclasses

    x, _ = blob_images(4, size=tiny_config.image_size)
    outputs = {}
    for memory in (False, True):
        torch.manual_seed(3)
        model = AIR(dataclasses.replace(tiny_config, dair=True, dair_memory=memory))
        with torch.no_grad():  # a proposal that depends on its input, and a decoder that draws nothing
            for p in model.predict.parameters():
                p.normal_(0, 0.3)
            model.decoder.net.last.bias.fill_(-30.0)
        outputs[memory] = model.guide(x, deterministic=True, z_pres=torch.ones(4, tiny_config.max_steps))
    for name in ("z_pres_logit", "z_where", "z_what"):
        steps = getattr(outputs[False], name)
        for i in range(1, tiny_config.max_steps):
            torch.testing.assert_close(steps[:, i], steps[:, 0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(outputs[True].z_pres_logit[:, 0], outputs[True].z_pres_logit[:, 1])


def test_memoryless_needs_dair():
    with pytest.raises(InputError, match="needs dair"):
        ModelConfig(dair_memory=False)


@pytest.mark.parametrize("dair", [False, True])
def test_max_composition_puts_the_brightest_object_on_each_pixel(tiny_config, dair):
    """composition="max": the canvas is the pixel-wise maximum of the present objects, in render, in DAIR's
    running canvas, in the enumerated objective's canvases and in infer's reconstruction; "sum" adds them."""
    import dataclasses

    torch.manual_seed(2)
    model = AIR(dataclasses.replace(tiny_config, dair=dair, composition="max"))
    with torch.no_grad():
        model.decoder.net.last.bias.fill_(0.5)  # objects bright enough to overlap
    x, _ = blob_images(6)
    n = tiny_config.max_steps
    q = model.guide(x, deterministic=True, z_pres=torch.ones(6, n))
    placed, _ = model.draw(q.z_what, q.z_where)
    want = placed.amax(1)
    assert (placed.sum(1) - want).abs().max() > 0.1  # the objects do overlap: sum and max differ
    torch.testing.assert_close(model.render(q.z_what, q.z_where, q.z_pres)[0], want)
    if dair:
        torch.testing.assert_close(q.canvas, want)
    # the enumerated objective's likelihood of n objects is the likelihood of the first n objects' maximum
    out = model.enumerated_objective(x, q)
    canvases = torch.stack([torch.zeros_like(want)] + [placed[:, :k].amax(1) for k in range(1, n + 1)], 1)
    q_n = count_log_probs(q.z_pres_logit).exp()
    want_ll = (q_n * model.log_likelihood(x[:, None], canvases)).sum(1).mean()
    torch.testing.assert_close(out.terms["log_lik"], want_ll, rtol=1e-5, atol=1e-3)
    # absent objects change nothing
    some = torch.tensor([1.0, 0.0, 0.0]).expand(6, n)
    torch.testing.assert_close(model.render(q.z_what, q.z_where, some)[0], placed[:, 0])
    r = model.infer(x)
    assert r.reconstruction.shape == (6, 1, 20, 20) and (r.reconstruction <= 1 + 1e-6).all()
    summed = AIR(dataclasses.replace(tiny_config, dair=dair))
    summed.load_state_dict(model.state_dict())
    torch.testing.assert_close(summed.render(q.z_what, q.z_where, q.z_pres)[0], placed.sum(1))


def test_composition_must_be_known():
    with pytest.raises(InputError, match="composition must be one of"):
        ModelConfig(composition="alpha")
