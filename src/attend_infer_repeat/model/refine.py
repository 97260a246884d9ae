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

The count is then chosen by the importance-weighted estimate of log p(x, n) (``samples`` > 0; Burda, Grosse and
Salakhutdinov, ICLR 2016) with q the guide's Gaussians at the refined locs:

    log (1/S) sum_s p(x | z^s_1..n) p(z^s_1..n) / q(z^s_1..n) + log p(n),    z^s ~ q.

score(n) draws every object at its mean but charges its KL at the guide's (often wide) standard deviation, so an
extra object that explains leftover ink only when it sits exactly at its mean is nearly free, and the count
drifts up; the importance-weighted estimate charges it for how precisely it must sit. The same noise is used for
every count and every image, so the choice is deterministic and an image's count does not depend on its batch.
"""
from __future__ import annotations

import math

import torch

from .objective import count_log_probs, kl_normal, normal_log_prob


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


def importance_score(model, x: torch.Tensor, z_where: torch.Tensor, z_what: torch.Tensor, where_std: torch.Tensor,
                     what_std: torch.Tensor, n: int, eps_where: torch.Tensor, eps_what: torch.Tensor,
                     chunk: int = 16) -> torch.Tensor:
    """log (1/S) sum_s p(x, z^s) / q(z^s), z^s = loc + std * eps_s (eps (S, B, >= n, ...)), without log p(n): (B,).

    The importance-weighted estimate of log p(x | n) (Burda, Grosse and Salakhutdinov, ICLR 2016) with q the guide's
    Gaussians at the (refined) locs; unlike score(n) it charges an object for how precisely it must sit to help."""
    if n == 0:
        return model.log_likelihood(x, torch.zeros_like(x))
    b, s_total = x.size(0), eps_where.size(0)
    log_w = []
    for i in range(0, s_total, chunk):
        ew, eh = eps_where[i:i + chunk, :, :n], eps_what[i:i + chunk, :, :n]
        k = ew.size(0)
        zw = z_where[None, :, :n] + where_std[None, :, :n] * ew
        zh = z_what[None, :, :n] + what_std[None, :, :n] * eh
        placed = model.draw(zh.reshape(k * b, n, -1), zw.reshape(k * b, n, 3))[0]
        log_lik = model.log_likelihood(x.repeat(k, 1, 1, 1), model.compose(placed)).view(k, b)
        log_p = (normal_log_prob(zw, model.where_prior_loc, model.where_prior_std).sum(2)
                 + normal_log_prob(zh, 0.0, 1.0).sum(2))
        log_q = (normal_log_prob(zw, z_where[None, :, :n], where_std[None, :, :n]).sum(2)
                 + normal_log_prob(zh, z_what[None, :, :n], what_std[None, :, :n]).sum(2))
        log_w.append(log_lik + log_p - log_q)
    return torch.logsumexp(torch.cat(log_w), 0) - math.log(s_total)


def refine_counts(model, x: torch.Tensor, steps: int, lr: float = 0.05, samples: int = 0, seed: int = 0):
    """Refine every count's latents for images x (B, 1, H, W) by ``steps`` Adam steps of size ``lr``.

    Returns (scores (B, N + 1) of the refined latents, log p(n) included: score(n), or with ``samples`` > 0 the
    importance-weighted estimate from that many samples, its noise drawn from ``seed``; z_where (B, N + 1, N, 3)
    and z_what (B, N + 1, N, D): the refined latents of each count n in row n, its first n steps used). The
    model's weights are not changed and get no gradients."""
    cfg = model.config
    with torch.no_grad():
        q = model.guide(x, deterministic=True, z_pres=x.new_ones(x.size(0), cfg.max_steps))
        # log p(n): the count prior at the end of its annealing (a geometric prior's), the one training ends with
        log_prior = count_log_probs(torch.logit(model.prior(cfg.z_pres_anneal_steps).double()).float()).to(x)
    where_std, what_std = q.z_where_std.detach(), q.z_what_std.detach()
    if samples:  # one set of noise for every image and count: an image's score does not depend on its batch
        g = torch.Generator().manual_seed(seed)
        eps_where = torch.randn((samples, 1) + where_std.shape[1:], generator=g).to(x).expand(-1, x.size(0), -1, -1)
        eps_what = torch.randn((samples, 1) + what_std.shape[1:], generator=g).to(x).expand(-1, x.size(0), -1, -1)
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
        if samples:
            with torch.no_grad():
                best = importance_score(model, x, best_where, best_what, where_std, what_std, n, eps_where, eps_what)
        scores.append(best + log_prior[n])
        wheres.append(best_where)
        whats.append(best_what)
    return torch.stack(scores, 1), torch.stack(wheres, 1), torch.stack(whats, 1)
