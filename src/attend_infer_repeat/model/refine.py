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
the count), n of its proposals are taken as the start, and their locs of z_where and z_what are moved by Adam to
maximise

    score(n) = log p(x | z_1..n) - sum_{i<=n} [KL(q(z_where_i) || p) + KL(q(z_what_i) || p)] + log p(n),

the ELBO term of count n with the posterior means as the sample and the guide's standard deviations kept
(``benchmarks/count_by_elbo.py`` scores the unrefined latents, ``steps=0``). Count n starts from every way of
keeping n of the guide's first n + 1 proposals (:func:`starts`), each refined, and each image keeps its best start
(by the score the count is then chosen by): where the guide spends two steps on one digit, or a step on nothing,
before the step that finds the next digit, the first n steps cannot reach that digit by gradient ascent (one window
does not cross the canvas onto ink it does not overlap), but a start without the wasted step holds it already. One
more start is count n - 1's refined latents and an object on the ink they leave unexplained (:func:`leftover_start`):
where the guide's n-th proposal misses a digit altogether (a step never trained to be present, as the third step of a
model trained on at most two digits), none of its proposals holds it. The best latents seen are kept, so a refined
score is never below that of the guide's own first n steps.

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
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import attention
from .objective import count_log_probs, kl_normal, normal_log_prob

# what the refined count does, recorded beside counts kept on disk so that one from an older procedure is redone
PROCEDURE = "guide starts + leftover start, importance-weighted choice"


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
                     canvases: int = 1024) -> torch.Tensor:
    """log (1/S) sum_s p(x, z^s) / q(z^s), z^s = loc + std * eps_s (eps (S, 1 or B, >= n, ...)), without log p(n):
    (B,).

    The importance-weighted estimate of log p(x | n) (Burda, Grosse and Salakhutdinov, ICLR 2016) with q the guide's
    Gaussians at the (refined) locs; unlike score(n) it charges an object for how precisely it must sit to help.
    Worked out in blocks of images and samples of about ``canvases`` canvases: the estimate is memory-bound, and
    blocks that stay in the CPU's cache are several times faster than one block of every sample and image."""
    if n == 0:
        return model.log_likelihood(x, torch.zeros_like(x))
    b, s_total = x.size(0), eps_where.size(0)
    rows = min(b, canvases)
    k = max(1, canvases // rows)  # samples per block
    shared = eps_where.size(1) == 1  # one noise for every image, or an image's own
    out = []
    for r in range(0, b, rows):
        xb = x[r:r + rows]
        loc_where, loc_what = z_where[None, r:r + rows, :n], z_what[None, r:r + rows, :n]
        std_where, std_what = where_std[None, r:r + rows, :n], what_std[None, r:r + rows, :n]
        m = xb.size(0)
        log_w = []
        for i in range(0, s_total, k):
            per = slice(None) if shared else slice(r, r + rows)
            ew, eh = eps_where[i:i + k, per, :n], eps_what[i:i + k, per, :n]
            zw, zh = loc_where + std_where * ew, loc_what + std_what * eh  # (k, m, n, ...)
            kk = zw.size(0)
            placed = model.draw(zh.reshape(kk * m, n, -1), zw.reshape(kk * m, n, 3))[0]
            canvas = model.compose(placed).view(kk, m, *xb.shape[1:])
            log_lik = model.log_likelihood(xb[None], canvas)
            log_p = (normal_log_prob(zw, model.where_prior_loc, model.where_prior_std).sum(2)
                     + normal_log_prob(zh, 0.0, 1.0).sum(2))
            log_q = (normal_log_prob(zw, loc_where, std_where).sum(2)
                     + normal_log_prob(zh, loc_what, std_what).sum(2))
            log_w.append(log_lik + log_p - log_q)
        out.append(torch.logsumexp(torch.cat(log_w), 0) - math.log(s_total))
    return torch.cat(out)


def starts(n: int, steps: int) -> list[tuple[int, ...]]:
    """Which of the guide's ``steps`` proposals count n starts from: every way of keeping n of its first n + 1
    (the first n first), or the first n where there is no (n + 1)-th."""
    if n == 0 or n >= steps:
        return [tuple(range(n))]
    return [tuple(i for i in range(n + 1) if i != drop) for drop in range(n, -1, -1)]


def leftover_start(model, x: torch.Tensor, z_where: torch.Tensor, z_what: torch.Tensor, where_std: torch.Tensor,
                   what_std: torch.Tensor, n: int, first_scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Count n's start from count n - 1's (refined) latents (B, N, ...) and one object more, put on the ink they
    leave unexplained: its window centred on that ink where a window-sized box of it is brightest, as large as
    the guide's first window (``first_scale`` (B,)), its z_what the guide's encoding of the leftover ink there.

    The guide's own n-th proposal can miss a digit the first n - 1 leave (a step never trained to be present,
    as the third step of a model trained on at most two digits), and gradient ascent does not carry a window
    across the canvas onto ink it does not overlap; this start holds the digit already."""
    cfg = model.config
    size = cfg.image_size
    drawn = model.compose(model.draw(z_what[:, :n - 1], z_where[:, :n - 1])[0]) if n > 1 else torch.zeros_like(x)
    left = (x - drawn).clamp_min(0)
    k = max(1, round(size / max(cfg.scale_prior_mean, 1.0))) | 1  # an odd box about a prior window's size
    ink = F.avg_pool2d(left, k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]
    at = ink.flatten(1).argmax(1)
    # centred on the centre of mass of the leftover ink in that box (boxes that all hold the whole of a small
    # digit tie, and the first of them would sit off its middle)
    pixels = torch.arange(size, device=x.device)
    near_row = ((pixels[None] - (at // size)[:, None]).abs() <= k // 2).to(x)  # (B, H)
    near_col = ((pixels[None] - (at % size)[:, None]).abs() <= k // 2).to(x)  # (B, W)
    mass = left[:, 0] * near_row[:, :, None] * near_col[:, None, :]
    total = mass.sum((1, 2)).clamp_min(1e-8)
    centre = pixels.to(x) + 0.5
    row = (mass.sum(2) * centre).sum(1) / total
    col = (mass.sum(1) * centre).sum(1) / total
    where = torch.stack([first_scale, col / size * 2 - 1, row / size * 2 - 1], -1)
    what, what_sd = model.encoder(attention.crop(left, where, cfg.window_size, cfg.min_zoom))
    out = [t.clone() for t in (z_where, z_what, where_std, what_std)]
    out[0][:, n - 1], out[1][:, n - 1], out[3][:, n - 1] = where, what.to(x), what_sd.to(x)
    return tuple(out)


class Refined(NamedTuple):
    """:func:`refine_counts`' answer, one row per count n = 0..N: ``scores`` (B, N + 1), log p(n) included;
    ``z_where`` (B, N + 1, N, 3), ``z_what`` (B, N + 1, N, D) and their guide's stds ``where_std``, ``what_std``
    (the same shapes): the refined latents of count n in row n, its first n steps used."""
    scores: torch.Tensor
    z_where: torch.Tensor
    z_what: torch.Tensor
    where_std: torch.Tensor
    what_std: torch.Tensor


def refine_counts(model, x: torch.Tensor, steps: int, lr: float = 0.05, samples: int = 0, seed: int = 0,
                  leftover: bool = True) -> Refined:
    """Refine every count's latents for images x (B, 1, H, W) by ``steps`` Adam steps of size ``lr``, from each
    of its starts (:func:`starts`), and keep each image's best start, by the score the count is chosen by.

    With ``leftover``, count n >= 1 also starts from count n - 1's kept latents and one object on the ink they
    leave (:func:`leftover_start`). Returns :class:`Refined`: score(n) of the kept latents, or with ``samples``
    > 0 the importance-weighted estimate from that many samples, its noise drawn from ``seed``. The model's
    weights are not changed and get no gradients."""
    cfg = model.config
    b, big_n = x.size(0), cfg.max_steps
    with torch.no_grad():
        q = model.guide(x, deterministic=True, z_pres=x.new_ones(b, big_n))
        # log p(n): the count prior at the end of its annealing (a geometric prior's), the one training ends with
        log_prior = count_log_probs(torch.logit(model.prior(cfg.z_pres_anneal_steps).double()).float()).to(x)
    guide = [t.detach() for t in (q.z_where_loc, q.z_what_loc, q.z_where_std, q.z_what_std)]
    if samples:  # one set of noise for every image and count: an image's score does not depend on its batch
        g = torch.Generator().manual_seed(seed)
        eps_where = torch.randn((samples, 1) + guide[2].shape[1:], generator=g).to(x)
        eps_what = torch.randn((samples, 1) + guide[3].shape[1:], generator=g).to(x)
    rows: list[list[torch.Tensor]] = [[], [], [], [], []]
    for n in range(big_n + 1):
        # every start of count n side by side in one batch: start c of image i is row c * B + i
        begins = starts(n, big_n)
        order = torch.tensor([list(s) + [i for i in range(big_n) if i not in s] for s in begins], device=x.device)
        blocks = [t[:, order].transpose(0, 1) for t in guide]  # (starts, B, N, ...)
        if leftover and n > 0:  # after the guide's starts, so the guide's own first n win a tie
            with torch.no_grad():
                extra = leftover_start(model, x, *(row[n - 1] for row in rows[1:]), n, guide[0][:, 0, 0])
            blocks = [torch.cat([t, e[None]]) for t, e in zip(blocks, extra)]
        z_where, z_what, where_std, what_std = (t.flatten(0, 1) for t in blocks)
        n_starts = blocks[0].size(0)
        xs = x.repeat(n_starts, 1, 1, 1)
        with torch.no_grad():
            best = count_score(model, xs, z_where, z_what, where_std, what_std, n)
        best_where, best_what = z_where.clone(), z_what.clone()
        if n > 0 and steps > 0:
            z_where.requires_grad_(True)
            z_what.requires_grad_(True)
            opt = torch.optim.Adam([z_where, z_what], lr=lr)
            for t in range(steps + 1):
                with torch.enable_grad():
                    score = count_score(model, xs, z_where, z_what, where_std, what_std, n)
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
        if samples:  # every start scored by the estimate the count is chosen by
            with torch.no_grad():
                best = importance_score(model, xs, best_where, best_what, where_std, what_std, n,
                                        eps_where, eps_what)
        # each image's best start (the first of equals: the guide's own first n when nothing beats it)
        pick = best.view(n_starts, b).argmax(0) * b + torch.arange(b, device=x.device)
        best, kept = best[pick], [t[pick] for t in (best_where, best_what, where_std, what_std)]
        for row, value in zip(rows, [best + log_prior[n], *kept]):
            row.append(value)
    return Refined(torch.stack(rows[0], 1), *(torch.stack(r, 1) for r in rows[1:]))
