"""The grid model (model/grid.py): its objective is the ELBO of the discrete model, its gradient estimator is
unbiased (checked against the exact sum over every z_pres), and it answers to AIR's interface."""
import itertools

import pytest
import torch

from attend_infer_repeat.errors import InputError
from attend_infer_repeat.model import AIR, GridAIR, ModelConfig, build_model
from attend_infer_repeat.model.grid import poisson_binomial
from attend_infer_repeat.model.objective import kl_bernoulli, kl_normal


def tiny(**kw) -> ModelConfig:
    base = dict(architecture="grid", grid_size=2, image_size=16, window_size=6, z_what_dim=3, encoder_hidden=8,
                decoder_hidden=8, predict_hidden=8, scale_prior_mean=2.0, z_pres_prior_p=0.3)
    return ModelConfig(**{**base, **kw})


def images(b: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, 1, size, size)
    for i in range(b):
        r, c = torch.randint(0, size - 5, (2,), generator=g).tolist()
        x[i, 0, r:r + 5, c:c + 5] = 0.9
    return x


def test_config_builds_the_grid_model_and_refuses_what_it_has_not():
    cfg = tiny()
    assert cfg.max_steps == 4 and isinstance(build_model(cfg), GridAIR)
    assert isinstance(build_model(ModelConfig()), AIR)
    assert ModelConfig(architecture="grid").max_steps == 36  # 6 x 6 cells
    for bad, message in [({"dair": True}, "dair is AIR's"), ({"max_steps": 5}, "one object slot per cell"),
                         ({"z_pres_estimator": "nvil"}, "local expectation"), ({"grid_size": 17}, "between 1 and 16"),
                         ({"architecture": "spair"}, "architecture must be one of")]:
        with pytest.raises(InputError, match=message):
            tiny(**bad)


def test_poisson_binomial_is_the_distribution_of_the_count():
    p = torch.tensor([[0.1, 0.7, 0.4], [1.0, 0.0, 0.5]], dtype=torch.float64)
    brute = torch.zeros(2, 4, dtype=torch.float64)
    for z in itertools.product([0, 1], repeat=3):
        zt = torch.tensor(z, dtype=torch.float64)
        brute[:, int(zt.sum())] += (p * zt + (1 - p) * (1 - zt)).prod(1)
    assert torch.allclose(poisson_binomial(p), brute)


def _elbo_at(model, x, z):
    """f(z) = log p(x | z) - sum_k z_k KL(continuous latents of k) - sum_k KL(z_pres_k), with its gradient."""
    q = model.guide(x, z_pres=z)
    canvas, _ = model.render(q.z_what, q.z_where, z)
    cost = kl_normal(q.z_where_loc, q.z_where_std, model.where_prior_loc, model.where_prior_std).sum(-1) + \
        kl_normal(q.z_what_loc, q.z_what_std, 0.0, 1.0).sum(-1)
    rho = torch.tensor(model.config.z_pres_prior_p, dtype=x.dtype)
    return model.log_likelihood(x, canvas) - (z * cost).sum(1) - kl_bernoulli(q.z_pres_logit, rho).sum(1), q


def _all_z(k: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)))


@pytest.mark.parametrize("composition,likelihood", [("sum", "gaussian"), ("max", "gaussian"), ("sum", "bernoulli")])
def test_the_objective_is_the_elbo_and_its_gradient_the_exact_one(composition, likelihood):
    """With the continuous noise held fixed, sum over all 2^K presence vectors: the exact ELBO is
    sum_z q(z) f(z); the surrogate's gradient averaged over z with weights q(z) must equal its gradient."""
    torch.manual_seed(0)
    model = GridAIR(tiny(composition=composition, likelihood=likelihood))
    x = images(2)
    k = model.cells
    zs = _all_z(k)
    params = [p for p in model.parameters() if p.requires_grad]

    def run(z):
        torch.manual_seed(1)  # the same continuous samples for every z
        return model.loss(x, z_pres=z.expand(x.size(0), k))

    # the exact ELBO of the discrete model, by enumeration, and its gradient
    exact = 0.0
    for z in zs:
        torch.manual_seed(1)
        zb = z.expand(x.size(0), k)
        f, q = _elbo_at(model, x, zb)
        log_q = (zb * torch.nn.functional.logsigmoid(q.z_pres_logit)
                 + (1 - zb) * torch.nn.functional.logsigmoid(-q.z_pres_logit)).sum(1)
        exact = exact + (log_q.exp() * f).mean()
        assert torch.allclose(run(z).elbo, f.detach())  # the objective's ELBO estimate is f(z)
    grad_exact = torch.autograd.grad(exact, params, allow_unused=True)

    # the estimator, in expectation over z ~ q (q does not depend on z: one guide run gives it)
    torch.manual_seed(1)
    q = model.guide(x)
    probs = torch.sigmoid(q.z_pres_logit).detach()
    expected = [torch.zeros_like(p) for p in params]
    for z in zs:
        weight = (probs * z + (1 - probs) * (1 - z)).prod(1)  # (B,)
        out = run(z)
        g = torch.autograd.grad((weight * out.per_image_loss).mean(), params, allow_unused=True)
        expected = [e + (0 if gi is None else gi) for e, gi in zip(expected, g)]
    for p, ge, gx in zip(params, expected, grad_exact):
        if gx is None:
            continue
        assert torch.allclose(-ge, gx, rtol=1e-4, atol=1e-6), (p.shape, (-ge - gx).abs().max())


def test_the_presence_prior_is_annealed_log_linearly():
    model = GridAIR(tiny(z_pres_prior_p=1e-2, grid_prior_final=1e-6, grid_prior_anneal_steps=100))
    got = torch.cat([model.prior(t) for t in (0, 50, 100, 1000)])
    assert torch.allclose(got, torch.tensor([1e-2, 1e-4, 1e-6, 1e-6]), rtol=1e-5, atol=0)
    assert float(GridAIR(tiny(grid_prior_anneal_steps=0)).prior(0)) == pytest.approx(1e-6)


def test_counts_are_the_present_cells():
    torch.manual_seed(0)
    z = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert GridAIR(tiny()).loss(images(3), z_pres=z).counts.tolist() == [2, 0, 4]


def test_it_answers_to_airs_interface_and_puts_each_cell_near_its_cell():
    torch.manual_seed(0)
    model = GridAIR(tiny())
    x = images(4)
    r = model.infer(x)
    assert r.pres_probs.shape == (4, 4) and r.step_windows.shape == (4, 4, 1, 6, 6)
    assert r.reconstruction.shape == (4, 1, 16, 16) and r.step_boxes.shape == (4, 4, 4)
    assert [len(b) for b in r.boxes] == r.counts.tolist()
    # a cell's window centre lies inside its own cell, whatever the guide says
    q = model.guide(x * 50)
    offset = (q.z_where[..., 1:] - model.cell_centres).abs()
    assert (offset <= 1 / model.config.grid_size + 1e-6).all()
    probs = model.count_probs(x)
    assert probs.shape == (4, 5) and torch.allclose(probs.sum(1), torch.ones(4))
    canvas, z, boxes = model.sample_prior(5, num_objects=3, generator=torch.Generator().manual_seed(0))
    assert canvas.shape == (5, 1, 16, 16) and z.sum(1).tolist() == [3.0] * 5 and boxes.shape == (5, 4, 4)
    with pytest.raises(InputError, match="num_objects must be between 0 and 4"):
        model.sample_prior(1, num_objects=5)


@pytest.mark.parametrize("composition,likelihood", [("sum", "gaussian"), ("max", "gaussian"), ("max", "bernoulli")])
def test_each_cell_draws_on_its_patch_as_air_draws_on_the_whole_canvas(composition, likelihood):
    """The patches are an economy, not a change of the model: for windows within the reach, the objects, the
    canvas and each cell's likelihood gain equal those computed on whole canvases (cells of 17 / 3 pixels, so
    patches start at rounded pixels and stick out of the image)."""
    torch.manual_seed(0)
    model = GridAIR(tiny(image_size=17, grid_size=3, composition=composition, likelihood=likelihood))
    b, k = 4, model.cells
    su = model.where_prior_loc + torch.randn(b, k, 3) * torch.tensor([0.3, 2.0, 2.0])
    z_where, z_what = model.where(su), torch.randn(b, k, 3)
    z = (torch.rand(b, k) < 0.6).float()
    whole, _ = AIR.draw(model, z_what, z_where)
    assert torch.allclose(model.draw(z_what, z_where)[0], whole, atol=1e-6)
    assert torch.allclose(model.render(z_what, z_where, z)[0], AIR.render(model, z_what, z_where, z)[0], atol=1e-6)
    x = torch.rand(b, 1, 17, 17).round() if likelihood == "bernoulli" else torch.rand(b, 1, 17, 17)
    patches = model.draw_patches(z_what, z_where)
    gains = model._likelihood_gains(x, model.canvas_of(patches * z[..., None]), patches, z)
    for cell in range(k):
        on, off = z.clone(), z.clone()
        on[:, cell], off[:, cell] = 1, 0
        brute = model.log_likelihood(x, AIR.render(model, z_what, z_where, on)[0]) - \
            model.log_likelihood(x, AIR.render(model, z_what, z_where, off)[0])
        assert torch.allclose(gains[:, cell], brute, atol=1e-4), cell
    # a window wider than the reach (here a quarter of the prior's window on either side) is cut at its patch's
    # edge: the middle cell's patch covers pixels 2..14
    narrow = GridAIR(tiny(image_size=17, grid_size=3, grid_reach=0.5))
    drawn = narrow.draw(torch.zeros(1, k, 3), torch.tensor([0.3, 0.0, 0.0]).expand(1, k, 3))[0][0, k // 2, 0]
    assert drawn[:2].sum() == 0 and drawn[15:].sum() == 0 and (drawn[2:15, 2:15] > 0).all()


def test_with_grid_centre_ink_each_object_is_drawn_centred_on_its_window():
    """The centre of each drawn object's ink is its window's centre (to resampling error), whatever the decoder
    draws, so that no cell can draw a digit centred in another; single objects (the report's) are drawn alike."""
    torch.manual_seed(0)
    model = GridAIR(tiny(image_size=32, grid_size=2, window_size=8, grid_centre_ink=True))
    z_what, k = 3 * torch.randn(2, 4, 3), model.cells
    z_where = model.where(torch.tensor([6.0, 0.0, 0.0]) + 0.3 * torch.randn(2, k, 3))  # windows inside the image
    ink = model.draw(z_what, z_where)[0][:, :, 0]
    pixel = torch.arange(32) + 0.5
    centre = torch.stack([(ink.sum(2) * pixel).sum(-1), (ink.sum(3) * pixel).sum(-1)], -1) / ink.sum((2, 3))[..., None]
    assert torch.allclose(centre, (z_where[..., 1:] + 1) * 16, atol=0.3)
    assert torch.allclose(model.draw(z_what[:, :1], z_where[:, :1])[0], ink[:, :1, None], atol=1e-5)
    plain = GridAIR(tiny(image_size=32, grid_size=2, window_size=8))
    plain.load_state_dict(model.state_dict())
    moved = plain.draw(z_what, z_where)[0][:, :, 0]
    assert (moved - ink).abs().max() > 0.05  # the decoder's drawings are not centred by themselves


def test_for_canvas_reads_a_larger_canvas_with_cells_and_windows_of_the_same_pixels():
    torch.manual_seed(0)
    model = GridAIR(tiny(image_size=32, grid_size=4, window_size=8, scale_prior_mean=4.0))
    wide = model.for_canvas(64)
    assert (wide.config.image_size, wide.config.grid_size, wide.cells) == (64, 8, 64)
    assert wide.config.scale_prior_mean == 8.0 and wide.config.scale_prior_std == 2 * model.config.scale_prior_std
    small, large = torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 64, 64)
    small[0, 0, 3:9, 4:10] = large[0, 0, 3:9, 4:10] = 1.0  # the same digit at the same pixels, top left
    a, b = model.infer(small), wide.infer(large)
    # the top-left cell sees the same pixels (the CNN's padding is the larger canvas's empty space) and so gives
    # the same window in pixels and the same presence
    assert torch.allclose(a.step_boxes[0, 0], b.step_boxes[0, 0], atol=1e-4)
    assert torch.allclose(a.pres_probs[0, 0], b.pres_probs[0, 0], atol=1e-5)
    assert torch.equal(wide.decoder.net[0].weight, model.decoder.net[0].weight)


def test_crop_many_is_crop_of_each_window():
    from attend_infer_repeat.model import attention

    x = images(2)
    z_where = torch.tensor([[[2.0, 0.1, -0.2], [1.5, -0.4, 0.3], [3.0, 0.0, 0.0]],
                            [[2.5, 0.2, 0.2], [1.0, 0.0, 0.0], [2.0, -0.5, 0.5]]])
    many = attention.crop_many(x, z_where, 6)
    for i in range(2):
        one = attention.crop(x[i:i + 1].expand(3, -1, -1, -1), z_where[i], 6)
        assert torch.allclose(many[i], one, atol=1e-6)


def test_air_train_eval_infer_resume_and_report_take_the_grid_model(tmp_path, capsys):
    """The whole product path with --model grid: train, a checkpoint AIR.load reads back as a GridAIR, eval,
    infer (boxes in input pixels), resume, and the report."""
    import json

    from attend_infer_repeat import AIR as LoadedAIR
    from attend_infer_repeat.cli import main

    run = tmp_path / "run"
    tiny_run = ["--model", "grid", "--grid-size", "3", "--dataset", "sprites", "--n-train", "64", "--n-test", "16",
                "--batch-size", "16", "--z-what-dim", "4", "--window-size", "8", "--eval-every", "2",
                "--eval-size", "16", "--checkpoint-every", "2", "--no-progress", "--threads", "1", "--compile", "off"]
    assert main(["train", "--steps", "2", "--run-dir", str(run), *tiny_run]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["held_out_n"] == 16
    model = LoadedAIR.load(run / "last.pt")
    assert isinstance(model, GridAIR) and model.config.max_steps == 9 and not model.config.dair
    assert (run / "report" / "index.html").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "16"]) == 0
    evaluation = json.loads((run / "eval.json").read_text())
    assert 0.0 <= evaluation["count_acc"] <= 1.0 and evaluation["max_steps"] == 9 and "iw_log_px" in evaluation
    image = tmp_path / "scene.npy"
    import numpy as np
    np.save(image, (np.random.default_rng(0).random((2, 50, 50)) > 0.97).astype(np.float32))
    assert main(["infer", str(run / "best.pt"), str(image), "--out", str(tmp_path / "inferred")]) == 0
    assert main(["train", "--steps", "4", "--run-dir", str(run), "--resume", "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 4

    from attend_infer_repeat.config import RunConfig
    from attend_infer_repeat.train import Trainer

    cfg = RunConfig.from_file(run / "config.json")
    # restarts are allowed (an empty grid starts again, tests/test_train.py), but not from --init-from weights
    assert cfg.train.restarts > 0 and Trainer(cfg, tmp_path / "other", progress=False).can_restart()


def test_importance_weights_estimate_the_same_elbo():
    """E_q[log p(x, z) - log q(z | x)] is the ELBO: the mean of the importance weights and the mean of the
    objective's ELBO estimates agree (both over many samples of one image), and K weights give the IW bound."""
    from attend_infer_repeat.evaluate import importance_log_px

    torch.manual_seed(0)
    model = GridAIR(tiny())
    x = images(1).expand(4000, -1, -1, -1)
    with torch.no_grad():
        w = model.log_weights(x)
        elbo = model.loss(x).elbo
    tol = 4 * (w.std() + elbo.std()) / len(x) ** 0.5
    assert abs(w.mean() - elbo.mean()) < tol, (w.mean(), elbo.mean(), tol)
    iw = importance_log_px(model, images(1), k=200)
    assert iw.item() >= elbo.mean().item() - tol  # the bound is tighter than the ELBO


def test_air_serve_decomposes_with_the_grid_model():
    """The page's model calls, without HTTP: a cell that is present anywhere in the grid gets its own crop."""
    from attend_infer_repeat.serve import Service

    torch.manual_seed(0)
    model = GridAIR(tiny())
    with torch.no_grad():
        model.propose.head[-1].bias[0] = 3.0  # most cells present
    service = Service(model, name="grid")
    assert service.info()["model"] == "grid" and service.info()["max_steps"] == 4
    out = service.infer(images(1))
    present = [s for s in out["steps"] if s["present"]]
    assert out["count"] == len(present) == len(out["boxes"]) > 1
    assert all(len(s["crop"]) == 6 * 6 and len(s["window"]) == 6 * 6 for s in present)
    generated = service.generate(2, 3, 1)
    assert [s["count"] for s in generated["scenes"]] == [3, 3]


def test_inference_reads_each_objects_box_from_its_patch_as_from_a_canvas_of_its_own():
    """infer draws each cell's object on its patch only; the boxes of what it draws, the reconstruction and the
    windows are those of AIR's way (every object on a whole canvas), for objects cut at a patch's or the
    image's edge too (grid 3 on 20 px: patches reach past the image on every side)."""
    torch.manual_seed(1)
    model = GridAIR(tiny(grid_size=3, image_size=20)).eval()
    with torch.no_grad():
        model.decoder.net.last.bias.normal_(0.0, 3.0)  # ink in some pixels, none in others
        model.propose.head[-1].bias[0] = 3.0  # every cell present
    x = images(6, size=20, seed=2)
    with torch.no_grad():
        q, canvas, windows, boxes = model.inferred(x)
        q2, canvas2, windows2, boxes2 = AIR.inferred(model, x)
    assert q.z_pres.all() and torch.equal(q.z_where, q2.z_where)
    assert torch.equal(boxes, boxes2) and (boxes[..., 2] > boxes[..., 0]).any()
    assert torch.allclose(canvas, canvas2, atol=1e-6) and torch.allclose(windows, windows2)
