import math

import torch

from attend_infer_repeat.config import ModelConfig
from attend_infer_repeat.model.objective import (
    count_log_prior,
    geometric_success,
    kl_bernoulli,
    kl_normal,
    reverse_cumsum,
    z_pres_prior_probs,
)


def test_kl_normal_matches_monte_carlo():
    g = torch.Generator().manual_seed(1)
    q_loc, q_std, p_loc, p_std = torch.tensor(0.7), torch.tensor(0.4), torch.tensor(3.0), torch.tensor(0.2)
    z = q_loc + q_std * torch.randn(400_000, generator=g)
    log_q = torch.distributions.Normal(q_loc, q_std).log_prob(z)
    log_p = torch.distributions.Normal(p_loc, p_std).log_prob(z)
    mc = (log_q - log_p).mean()
    assert abs(float(kl_normal(q_loc, q_std, p_loc, p_std)) - float(mc)) < 0.02 * float(mc)


def test_kl_bernoulli_matches_monte_carlo_and_is_finite_at_the_edges():
    g = torch.Generator().manual_seed(2)
    logit, p = torch.tensor(0.8), torch.tensor(0.01)
    q = torch.sigmoid(logit)
    z = torch.bernoulli(q.expand(400_000), generator=g)
    mc = (z * (q.log() - p.log()) + (1 - z) * ((1 - q).log() - (1 - p).log())).mean()
    assert abs(float(kl_bernoulli(logit, p)) - float(mc)) < 0.02
    edges = kl_bernoulli(torch.tensor([-1e4, -50.0, 50.0, 1e4]), torch.tensor(0.01))
    assert torch.isfinite(edges).all() and (edges >= 0).all()


def test_geometric_prior_stepwise_form_gives_truncated_geometric_counts():
    cfg = ModelConfig(z_pres_prior="geometric", z_pres_prior_p=0.3, z_pres_anneal_steps=0, max_steps=3)
    log_p = count_log_prior(cfg)
    expected = torch.tensor([0.3 ** k for k in range(4)])
    expected = expected / expected.sum()
    assert torch.allclose(log_p.exp(), expected, atol=1e-6)
    assert abs(float(log_p.exp().sum()) - 1) < 1e-6


def test_bernoulli_prior_and_annealing():
    cfg = ModelConfig(z_pres_prior="bernoulli", z_pres_prior_p=0.01)
    assert torch.allclose(z_pres_prior_probs(cfg, 12345), torch.full((3,), 0.01))
    g = ModelConfig(z_pres_prior="geometric", z_pres_anneal_start=0.99, z_pres_prior_p=1e-5,
                    z_pres_anneal_steps=100)
    assert math.isclose(geometric_success(g, 0), 0.99)
    assert math.isclose(geometric_success(g, 100), 1e-5) and math.isclose(geometric_success(g, 10**6), 1e-5)
    mid = geometric_success(g, 50)
    assert math.isclose(mid, math.sqrt(0.99 * 1e-5), rel_tol=1e-9)  # log-linear
    assert (z_pres_prior_probs(g, 0) > z_pres_prior_probs(g, 100)).all()


def test_reverse_cumsum():
    assert torch.equal(reverse_cumsum(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[6.0, 5.0, 3.0]]))
