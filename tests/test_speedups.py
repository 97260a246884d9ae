"""Every speed-up computes what the straightforward code computes (within float tolerance)."""
import torch
import torch.nn as nn
from helpers import blob_images

from attend_infer_repeat import AIR
from attend_infer_repeat.config import RunConfig, TrainConfig
from attend_infer_repeat.model.networks import ImageLSTM
from attend_infer_repeat.run_setup import make_optimizer


def test_image_lstm_equals_lstm_cell_on_the_concatenated_input():
    """Projecting the image once and the latents per step is nn.LSTMCell on [image, latents]."""
    g = torch.Generator().manual_seed(0)
    ours = ImageLSTM(image_dim=30, latent_dim=5, hidden=8)
    cell = nn.LSTMCell(35, 8)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.cat([ours.image_proj.weight, ours.latent_proj.weight[:, :5]], 1))
        cell.weight_hh.copy_(ours.latent_proj.weight[:, 5:])
        cell.bias_ih.copy_(ours.image_proj.bias)
        cell.bias_hh.zero_()
    image, state = torch.randn(4, 30, generator=g), (torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g))
    proj = ours.project_image(image)
    ref_state = state
    for _ in range(3):  # the same projection serves every step
        latents = torch.randn(4, 5, generator=g)
        state = ours(proj, latents, state)
        ref_state = cell(torch.cat([image, latents], 1), ref_state)
        assert torch.allclose(state[0], ref_state[0], atol=1e-6) and torch.allclose(state[1], ref_state[1], atol=1e-6)


def test_batched_rendering_equals_drawing_one_step_at_a_time(tiny_config):
    model = AIR(tiny_config)
    x, _ = blob_images(8)
    q = model.guide(x)
    canvas, windows = model.render(q.z_what, q.z_where, q.z_pres)
    one_by_one = sum(model.render(q.z_what[:, i:i + 1], q.z_where[:, i:i + 1], q.z_pres[:, i:i + 1])[0]
                     for i in range(tiny_config.max_steps))
    assert torch.allclose(canvas, one_by_one, atol=1e-6)


def test_fused_adam_matches_plain_adam(tiny_config):
    x, _ = blob_images(32)
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = AIR(tiny_config)
        opt = make_optimizer(model, RunConfig(model=tiny_config))
        if fused:
            assert opt.defaults["fused"]  # the trainer's optimiser is the fused kernel on the CPU
        else:
            # the plain for-loop implementation (fresh groups: the trainer's carry fused=True)
            opt = torch.optim.Adam([{"params": g["params"], "lr": g["lr"]} for g in opt.param_groups],
                                   foreach=False)
            assert not opt.param_groups[0]["fused"]
        for _ in range(3):
            torch.manual_seed(1)
            out = model.loss(x)
            opt.zero_grad()
            (out.loss + out.baseline_loss).backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_bf16_autocast_gives_the_same_elbo_and_gradient_direction(tiny_config):
    from attend_infer_repeat.train import Data, Trainer

    x, c = blob_images(64)
    u8 = (x[:, 0] * 255).to(torch.uint8)
    grads, elbos = [], []
    for precision in ("fp32", "bf16"):
        tr = Trainer(RunConfig(model=tiny_config, train=TrainConfig(precision=precision, device="cpu")),
                     "/nonexistent", data=Data(u8, c, u8, c), progress=False, tensorboard=False)
        torch.manual_seed(5)
        with tr.autocast():
            out = tr.model.loss(x)
        (out.loss + out.baseline_loss).backward()
        elbos.append(out.elbo)
        grads.append(torch.cat([p.grad.flatten() for n, p in tr.model.named_parameters()
                                if not n.startswith("baseline.")]))
    assert (elbos[0] - elbos[1]).abs().max() < 0.01 * elbos[0].abs().mean()
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cosine > 0.99, cosine
