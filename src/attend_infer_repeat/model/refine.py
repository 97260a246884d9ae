"""Semi-amortised inference of the count: the guide's latents refined, per image, by gradient ascent on the
ELBO of each count, and the count whose refined ELBO is best (ours; an inference procedure, the model is the
paper's).

The guide is amortised: one network proposes every image's latents, and where it is wrong the count is wrong
with it. Two ways it goes wrong on scenes unlike its training scenes: a window too small for a large digit, the
rest of whose ink a second window then explains (one digit counted twice), and one window on two crossing digits
(the second digit's ink drawn into the first glyph or left unexplained). Refining each count's latents from the
guide's starting point (as semi-amortised VAEs do: Kim, Wiseman, Miller, Sontag and Rush, ICML 2018; Marino, Yue
and Mandt, ICML 2018) lets the one-object explanation grow its window and the two-object one move its second
window onto the leftover ink, and the model's own ELBO, no labels, then chooses between them.

For each count n = 0..N, with the guide run with every step present (so each step's proposal is there whatever
the count), the locs of z_where_1..n and z_what_1..n are moved by Adam to maximise

    score(n) = log p(x | z_1..n) - sum_{i<=n} [KL(q(z_where_i) || p) + KL(q(z_what_i) || p)] + log p(n),

the ELBO term of count n with the posterior means as the sample and the guide's standard deviations kept
(``benchmarks/count_by_elbo.py`` scores the unrefined latents, ``steps=0``). The best latents seen for each
count are kept, so a refined score is never below the guide's own.
"""
from __future__ import annotations

import torch

from .objective import count_log_probs, kl_normal


def count_score(model, x: torch.Tensor, z_where: torch.Tensor, z_what: torch.Tensor, where_std: torch.Tensor,
                what_std: torch.Tensor, n: int) -> torch.Tensor:
    """score(n) without log p(n), (B,): the first n objects drawn from z_where, z_what (B, >= n, ...)."""
    if n == 0:
        return model.log_likelihood(x, torch.zeros_like(x))
    placed = model.draw(z_what[:, :n], z_where[:, :n])[0]
    log_lik = model.log_likelihood(x, model.compose(placed))
    kl = (kl_normal(z_where[:, :n], where_std[:, :n], model.where_prior_loc, model.where_prior_std).sum((1, 2))
          + kl_normal(z_what[:, :n], what_std[:, :n], 0.0, 1.0).sum((1, 2)))
    return log_lik - kl


def refine_counts(model, x: torch.Tensor, steps: int, lr: float = 0.05):
    """Refine every count's latents for images x (B, 1, H, W) by ``steps`` Adam steps of size ``lr``.

    Returns (scores (B, N + 1) of the refined latents, log p(n) included; z_where (B, N + 1, N, 3) and z_what
    (B, N + 1, N, D): the refined latents of each count n in row n, its first n steps used). The model's weights
    are not changed and get no gradients."""
    cfg = model.config
    with torch.no_grad():
        q = model.guide(x, deterministic=True, z_pres=x.new_ones(x.size(0), cfg.max_steps))
        # log p(n): the count prior at the end of its annealing (a geometric prior's), the one training ends with
        log_prior = count_log_probs(torch.logit(model.prior(cfg.z_pres_anneal_steps).double()).float()).to(x)
    where_std, what_std = q.z_where_std.detach(), q.z_what_std.detach()
    scores, wheres, whats = [], [], []
    for n in range(cfg.max_steps + 1):
        z_where, z_what = q.z_where_loc.detach().clone(), q.z_what_loc.detach().clone()
        with torch.no_grad():
            best = count_score(model, x, z_where, z_what, where_std, what_std, n)
        best_where, best_what = z_where.clone(), z_what.clone()
        if n > 0 and steps > 0:
            z_where.requires_grad_(True)
            z_what.requires_grad_(True)
            opt = torch.optim.Adam([z_where, z_what], lr=lr)
            for t in range(steps + 1):
                with torch.enable_grad():
                    score = count_score(model, x, z_where, z_what, where_std, what_std, n)
                    grads = torch.autograd.grad(-score.sum(), [z_where, z_what]) if t < steps else None
                with torch.no_grad():  # keep, image by image, the best latents seen (the score before this step)
                    better = score.detach() > best
                    best = torch.where(better, score.detach(), best)
                    best_where[better] = z_where.detach()[better]
                    best_what[better] = z_what.detach()[better]
                if grads is None:
                    break
                z_where.grad, z_what.grad = grads
                opt.step()
        scores.append(best + log_prior[n])
        wheres.append(best_where)
        whats.append(best_what)
    return torch.stack(scores, 1), torch.stack(wheres, 1), torch.stack(whats, 1)
