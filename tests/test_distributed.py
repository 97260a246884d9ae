"""Data-parallel training on 2 CPU processes (Gloo): every step of each process must equal the single-process
step on the same global batch, with each half's latents sampled as that process samples them: the same
averaged gradients, learning rates and weights."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import blob_images

from attend_infer_repeat.checkpoint import load_checkpoint
from attend_infer_repeat.config import ModelConfig, RunConfig, TrainConfig
from attend_infer_repeat.runtime import rank_seed
from attend_infer_repeat.train import Data, Trainer

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available in this torch build")


def tiny(architecture: str = "air"):
    grid = {"grid_size": 2} if architecture == "grid" else {}
    return ModelConfig(image_size=20, window_size=8, z_what_dim=4, lstm_hidden=16, encoder_hidden=16,
                       decoder_hidden=16, predict_hidden=16, scale_prior_mean=2.0, architecture=architecture, **grid)


def config(steps: int, architecture: str = "air") -> RunConfig:
    return RunConfig(model=tiny(architecture), train=TrainConfig(steps=steps, batch_size=16, lr=1e-3, eval_every=1000,
                                                     checkpoint_every=1000, log_every=1, seed=3, device="cpu",
                                                     precision="fp32", threads=1, compile="off", restarts=0))


def data() -> Data:
    x, c = blob_images(128, seed=1)
    u8 = (x[:, 0] * 255).to(torch.uint8)
    return Data(u8, c, u8[:32], c[:32])


def _rank(rank: int, port: int, run_dir: str, steps: int, architecture: str = "air") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    trainer = Trainer(config(steps, architecture), run_dir, data=data(), progress=False, tensorboard=False)
    # what this process applies at every step: the gradients (after DDP's all-reduce) and learning rates the
    # optimiser is handed, and the weights it leaves
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    trace = {"grads": [], "lrs": [], "weights": []}

    def before(opt, args, kwargs):
        trace["grads"].append({names[id(p)]: p.grad.detach().clone() for g in opt.param_groups
                               for p in g["params"] if p.grad is not None})
        trace["lrs"].append({g["name"]: g["lr"] for g in opt.param_groups})

    def after(opt, args, kwargs):
        trace["weights"].append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    trainer.opt.register_step_pre_hook(before)
    trainer.opt.register_step_post_hook(after)
    trainer.fit()
    # the trainer joined the group and leaves it itself: an exit left to Gloo's threads aborted 1 run in 10
    assert not dist.is_initialized() and trainer.ddp is None
    torch.save(trace, os.path.join(run_dir, f"trace-rank{rank}.pt"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cosine_lr(step: int, cfg: RunConfig) -> float:
    """The schedule written out: lr * (f + (1 - f) (1 + cos(pi step / steps)) / 2)."""
    t = cfg.train
    return t.lr * (t.lr_final_fraction + (1 - t.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * step / t.steps)))


def single_process_reference(cfg: RunConfig, run_dir) -> list[dict]:
    """The same steps in one process: each half of the global batch with the latents its process would sample
    (from that process's seed, its RNG stream carried from step to step), the two halves' gradients averaged,
    the scheduled learning rate, one Adam step. Returns each step's gradients, learning rates and weights."""
    ref = Trainer(cfg, run_dir, data=data(), progress=False, tensorboard=False)
    assert ref.world == 1
    d = ref.data
    streams = []
    for rank in (0, 1):
        torch.manual_seed(rank_seed(cfg.train.seed, rank))
        streams.append(torch.get_rng_state())
    trace = []
    for step in range(cfg.train.steps):
        lrs = {"model": cosine_lr(step, cfg), "baseline": cfg.train.baseline_lr}
        for g in ref.opt.param_groups:
            g["lr"] = lrs[g["name"]]
        idx = ref.next_batch()
        ref.opt.zero_grad()
        for rank in (0, 1):
            torch.set_rng_state(streams[rank])
            x = d.train_images[idx[rank::2]].float()[:, None] / 255
            out = ref.model.loss(x, step)
            ((out.loss + out.baseline_loss) / 2).backward()
            streams[rank] = torch.get_rng_state()
        grads = {n: p.grad.detach().clone() for n, p in ref.model.named_parameters() if p.grad is not None}
        ref.opt.step()
        trace.append({"grads": grads, "lrs": {g["name"]: g["lr"] for g in ref.opt.param_groups},
                      "weights": {k: v.detach().clone() for k, v in ref.model.state_dict().items()}})
    return trace


STEPS = 3


@pytest.mark.parametrize("architecture", ["air", "grid"])
def test_two_processes_match_the_single_process_run(tmp_path, architecture):
    """Three steps of 2-process DDP against the single-process reference, for BOTH processes, step by step.

    Gradients are compared directly, to 1e-5 of their norm: Adam is invariant to the scale of the gradient
    (m / sqrt(v), at every step, eps aside), so gradients summed instead of averaged across processes would move
    the weights by less than any float tolerance; here they are off by 100%. The weights after each step, to
    1e-6, catch a wrong learning rate (the cosine schedule changes it every step) or a process that steps
    differently; the two processes' weights must be bitwise equal (they apply the same all-reduced update).
    Both models: AIR and the grid model (``--model grid``)."""
    run = tmp_path / "ddp"
    mp.spawn(_rank, args=(free_port(), str(run), STEPS, architecture), nprocs=2, join=True)
    ranks = [torch.load(run / f"trace-rank{r}.pt") for r in (0, 1)]
    want = single_process_reference(config(STEPS, architecture), tmp_path / "ref")
    assert want[0]["lrs"]["model"] > want[1]["lrs"]["model"] > want[2]["lrs"]["model"]  # the schedule acts

    for rank, got in enumerate(ranks):
        assert len(got["grads"]) == len(got["weights"]) == STEPS, f"process {rank} did not take {STEPS} steps"
        for step in range(STEPS):
            where = f"process {rank}, step {step + 1}"
            assert got["lrs"][step] == pytest.approx(want[step]["lrs"], rel=1e-12), f"{where}: learning rates"
            g, w = got["grads"][step], want[step]["grads"]
            assert g.keys() == w.keys(), f"{where}: the parameters with a gradient differ"
            for name in w:
                err = float((g[name] - w[name]).norm())
                assert err <= 1e-5 * float(w[name].norm()) + 1e-9, \
                    f"{where}: gradient of {name} off by {err:.3g} (norm {float(w[name].norm()):.3g})"
            for name, value in want[step]["weights"].items():
                diff = float((got["weights"][step][name] - value).abs().max())
                assert diff <= 1e-6, f"{where}: weight {name} off by {diff:.3g}"
    for step in range(STEPS):
        for name, value in ranks[0]["weights"][step].items():
            assert torch.equal(value, ranks[1]["weights"][step][name]), f"the processes disagree on {name}"
    saved = load_checkpoint(run / "last.pt")  # what the first process wrote is what both processes hold
    assert saved["step"] == STEPS
    for name, value in saved["model"].items():
        assert torch.equal(value, ranks[1]["weights"][-1][name]), name


def test_distributed_run_writes_from_the_first_process_only(tmp_path):
    run = tmp_path / "ddp"
    mp.spawn(_rank, args=(free_port(), str(run), 4), nprocs=2, join=True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "train"' in line for line in lines) == 4  # one record per step, not one per process
    import json
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
