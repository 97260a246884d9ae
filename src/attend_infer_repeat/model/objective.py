"""Pieces of the AIR objective that do not depend on the networks: analytic KL divergences, the prior on
the number of objects and its annealing, and the score-function (NVIL) surrogate for the discrete z_pres.

The ELBO itself is assembled in :meth:`attend_infer_repeat.model.AIR.loss`, next to the generative model and
the guide, so that all three can be read and checked against the paper in one file.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import ModelConfig


def kl_normal(q_loc: torch.Tensor, q_std: torch.Tensor, p_loc, p_std) -> torch.Tensor:
    """KL( N(q_loc, q_std^2) || N(p_loc, p_std^2) ), elementwise."""
    p_loc = torch.as_tensor(p_loc, dtype=q_loc.dtype, device=q_loc.device)
    p_std = torch.as_tensor(p_std, dtype=q_loc.dtype, device=q_loc.device)
    var_ratio = (q_std / p_std) ** 2
    return 0.5 * (var_ratio + ((q_loc - p_loc) / p_std) ** 2 - 1.0 - torch.log(var_ratio))


def kl_bernoulli(q_logit: torch.Tensor, p_prob: torch.Tensor) -> torch.Tensor:
    """KL( Bern(sigmoid(q_logit)) || Bern(p_prob) ), elementwise, computed in log space: finite even when the
    guide's probability is 0 or 1 to machine precision."""
    q = torch.sigmoid(q_logit)
    log_q, log_1mq = F.logsigmoid(q_logit), F.logsigmoid(-q_logit)
    p_prob = p_prob.to(q_logit)
    return q * (log_q - torch.log(p_prob)) + (1.0 - q) * (log_1mq - torch.log1p(-p_prob))


def normal_log_prob(x: torch.Tensor, loc, std) -> torch.Tensor:
    """log N(x | loc, std^2) summed over the last dimension."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    return (-0.5 * ((x - loc) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def bernoulli_log_prob(value: torch.Tensor, logit: torch.Tensor) -> torch.Tensor:
    """log Bern(value | sigmoid(logit)), stable for any logit."""
    return value * F.logsigmoid(logit) + (1.0 - value) * F.logsigmoid(-logit)


def geometric_success(cfg: ModelConfig, train_step: int) -> float:
    """The geometric prior's success probability at a training step: annealed log-linearly from
    ``z_pres_anneal_start`` to ``z_pres_prior_p`` over ``z_pres_anneal_steps`` (the paper's schedule, as its
    authors described it to Kosiorek)."""
    if cfg.z_pres_anneal_steps == 0:
        return cfg.z_pres_prior_p
    t = min(max(train_step, 0) / cfg.z_pres_anneal_steps, 1.0)
    return math.exp((1 - t) * math.log(cfg.z_pres_anneal_start) + t * math.log(cfg.z_pres_prior_p))


def z_pres_prior_probs(cfg: ModelConfig, train_step: int = 0) -> torch.Tensor:
    """p(z_pres_i = 1 | z_pres_{i-1} = 1) for i = 1..N, the step-wise form of the prior on the count n.

    * ``bernoulli``: a fixed p at every step (the Pyro tutorial), i.e. p(n) proportional to p^n.
    * ``geometric``: the count n ~ Geometric(rho) truncated to {0..N}, p(n) proportional to rho^n; written
      step by step, p(continue at i) = sum_{k>=i} rho^k / sum_{k>=i-1} rho^k.
    """
    n = cfg.max_steps
    if cfg.z_pres_prior == "bernoulli":
        return torch.full((n,), cfg.z_pres_prior_p, dtype=torch.float64).float()
    rho = geometric_success(cfg, train_step)
    powers = torch.tensor([rho ** k for k in range(n + 1)], dtype=torch.float64)
    tail = powers.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j>=k} rho^j
    return (tail[1:] / tail[:-1]).clamp(1e-12, 1 - 1e-12).float()


def count_log_prior(cfg: ModelConfig, train_step: int = 0) -> torch.Tensor:
    """log p(n) for n = 0..N implied by the step-wise prior (used to sample scenes from the prior)."""
    return count_log_probs(torch.logit(z_pres_prior_probs(cfg, train_step).double())).float()


def count_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log P(n), n = 0..N, of the count that step-wise presence logits (..., N) imply: z_pres is 1 for the first
    n steps, then 0 (step N + 1 does not exist, so n = N needs no stop). Shape (..., N + 1), in log space:
    finite for any logit."""
    zero = torch.zeros_like(logits[..., :1])
    log_go = torch.cat([zero, F.logsigmoid(logits).cumsum(-1)], -1)  # log prod_{i<=n} q_i
    log_stop = torch.cat([F.logsigmoid(-logits), zero], -1)  # log(1 - q_{n+1})
    return log_go + log_stop


def previous_present(z_pres: torch.Tensor) -> torch.Tensor:
    """z_pres_{i-1} for every step i, with z_pres_0 = 1: where z_pres_i was really sampled (B, N). After the
    first absent object every later z_pres is 0 with probability 1 and contributes no density or gradient."""
    return torch.cat([torch.ones_like(z_pres[:, :1]), z_pres[:, :-1]], 1)


def reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """sum_{j >= i} x_j along the last dimension."""
    return x.flip(-1).cumsum(-1).flip(-1)


def score_function_surrogate(log_q_pres: torch.Tensor, signal: torch.Tensor, baseline: torch.Tensor | None,
                             sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NVIL surrogate for the z_pres gradient.

    ``log_q_pres`` (B, N) are log q(z_pres_i) of the sampled values; ``sampled`` (B, N) is 1 where z_pres_i
    was really sampled and 0 where an earlier absent object forced it to 0 (there it has no gradient).
    ``signal`` (B, N) is, per step, the part of the ELBO that z_pres_i can influence (Rao-Blackwellised: the
    reconstruction and the KL terms of steps >= i). Minimising the returned surrogate adds
    ``E[(signal_i - baseline_i) * grad log q(z_pres_i)]`` to the ELBO gradient; the second value is the
    baseline's regression loss (it trains the baseline only)."""
    signal = signal.detach()
    log_q_pres = log_q_pres * sampled
    if baseline is None:
        return -(signal * log_q_pres).sum(-1), torch.zeros_like(signal[:, 0])
    surrogate = -((signal - baseline.detach()) * log_q_pres).sum(-1)
    baseline_loss = (sampled * (signal - baseline) ** 2).sum(-1)
    return surrogate, baseline_loss
