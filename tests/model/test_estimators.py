"""The objective against independent computations: the ELBO of hand-made traces against ``torch.distributions``,
the enumerated ELBO against the sum over every count, and the score-function (NVIL) estimator's expected
gradient against the exact gradient, by enumerating every z_pres run of a tiny model.

Each test fails on a known way to break the objective silently: dropping a KL term, the Gaussian's
-log(sigma), the sign of the z_pres surrogate, or a cost from the Rao-Blackwellised learning signal."""
import dataclasses

import pytest
import torch
from helpers import blob_images
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from attend_infer_repeat import AIR
from attend_infer_repeat.model import GuideOutput
from attend_infer_repeat.model.objective import count_log_probs


def small_model(tiny_config, **options) -> AIR:
    """A tiny model whose presence probabilities differ per image and step and stay away from 0 and 1, so
    that every count has weight."""
    cfg = dataclasses.replace(tiny_config, z_pres_init_logit=0.3, likelihood_sigma=0.7, **options)
    torch.manual_seed(1)
    model = AIR(cfg)
    with torch.no_grad():
        model.predict.net.last.weight.normal_(0, 0.3)
    return model


def hand_trace(model: AIR, b: int, z_pres: list[float], seed: int = 0) -> GuideOutput:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    n, d = cfg.max_steps, cfg.z_what_dim
    where_loc = model.where_prior_loc + 0.3 * torch.randn(b, n, 3, generator=g)
    what_loc = torch.randn(b, n, d, generator=g)
    return GuideOutput(
        z_pres=torch.tensor(z_pres).expand(b, n).clone(), z_pres_logit=torch.randn(b, n, generator=g),
        z_where=where_loc + 0.1 * torch.randn(b, n, 3, generator=g), z_where_loc=where_loc,
        z_where_std=0.05 + torch.rand(b, n, 3, generator=g), z_what=what_loc + torch.randn(b, n, d, generator=g),
        z_what_loc=what_loc, z_what_std=0.2 + torch.rand(b, n, d, generator=g), baseline=torch.zeros(b, n))


def reference_elbo(model: AIR, x: torch.Tensor, q: GuideOutput) -> torch.Tensor:
    """The ELBO of a trace written with torch.distributions: log N(x | canvas, sigma) (or Bernoulli), the
    KLs of every present object, and the z_pres KL of every step that was really sampled."""
    cfg = model.config
    canvas, _ = model.render(q.z_what, q.z_where, q.z_pres)
    if cfg.likelihood == "gaussian":
        log_lik = Normal(canvas, cfg.likelihood_sigma).log_prob(x).flatten(1).sum(1)
    else:
        log_lik = Bernoulli(probs=canvas.clamp(1e-4, 1 - 1e-4), validate_args=False).log_prob(x).flatten(1).sum(1)
    where_prior = Normal(model.where_prior_loc, model.where_prior_std)
    kl_where = kl_divergence(Normal(q.z_where_loc, q.z_where_std), where_prior).sum(-1)
    kl_what = kl_divergence(Normal(q.z_what_loc, q.z_what_std), Normal(0.0, 1.0)).sum(-1)
    prior = model.prior()
    kl_pres = kl_divergence(Bernoulli(logits=q.z_pres_logit), Bernoulli(probs=prior.expand_as(q.z_pres_logit)))
    sampled = torch.cat([torch.ones_like(q.z_pres[:, :1]), q.z_pres[:, :-1]], 1)
    return log_lik - (q.z_pres * (kl_where + kl_what)).sum(1) - (sampled * kl_pres).sum(1)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("z_pres", [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
def test_elbo_of_a_hand_made_trace_matches_torch_distributions(tiny_config, likelihood, z_pres):
    model = small_model(tiny_config, likelihood=likelihood, z_pres_estimator="nvil")
    x, _ = blob_images(6)
    q = hand_trace(model, 6, [float(v) for v in z_pres])
    assert torch.allclose(model.objective(x, q).elbo, reference_elbo(model, x, q), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("dair", [False, True])
def test_enumerated_elbo_is_the_expectation_over_every_count(tiny_config, dair):
    """The enumerated ELBO equals sum_n q(n) ELBO(trace with n objects), the traces sharing the continuous
    latents, and its count KL is the KL of the categorical distributions of n."""
    model = small_model(tiny_config, dair=dair)
    x, _ = blob_images(8)
    n = model.config.max_steps
    torch.manual_seed(5)
    q_all = model.guide(x, z_pres=torch.ones(8, n))
    enumerated = model.enumerated_objective(x, q_all)
    q_n = count_log_probs(q_all.z_pres_logit).exp()
    assert torch.allclose(q_n.sum(1), torch.ones(8))
    total = torch.zeros(8)
    for count in range(n + 1):
        run = (torch.arange(n) < count).float().expand(8, n)
        torch.manual_seed(5)  # the same noise: the same continuous latents for the present steps
        q = model.guide(x, z_pres=run)
        assert torch.allclose(q.z_where[:, :count], q_all.z_where[:, :count])
        total = total + q_n[:, count] * reference_elbo(model, x, q)
    assert torch.allclose(enumerated.elbo, total, rtol=1e-5, atol=1e-3)
    p_n = count_log_probs(torch.logit(model.prior())).exp()
    kl_count = kl_divergence(Categorical(probs=q_n), Categorical(probs=p_n.expand_as(q_n)))
    assert torch.allclose(enumerated.terms["kl_pres"], kl_count.mean(), rtol=1e-5)


def test_enumerated_elbo_of_a_trace_matches_a_direct_sum(tiny_config):
    """The same identity on a hand-made trace, written out with the Gaussian density: nothing of the model
    beyond render and the prior."""
    model = small_model(tiny_config)
    x, _ = blob_images(5)
    q = hand_trace(model, 5, [1.0, 1.0, 1.0], seed=3)
    got = model.enumerated_objective(x, q).elbo
    placed, _ = model.draw(q.z_what, q.z_where)
    sigma = model.config.likelihood_sigma
    log_q = count_log_probs(q.z_pres_logit)
    log_p = count_log_probs(torch.logit(model.prior()))
    kl_obj = (kl_divergence(Normal(q.z_where_loc, q.z_where_std),
                            Normal(model.where_prior_loc, model.where_prior_std)).sum(-1)
              + kl_divergence(Normal(q.z_what_loc, q.z_what_std), Normal(0.0, 1.0)).sum(-1))
    want = torch.zeros(5)
    for count in range(4):
        canvas = placed[:, :count].sum(1)
        ll = Normal(canvas, sigma).log_prob(x).flatten(1).sum(1)
        want = want + log_q[:, count].exp() * (ll - kl_obj[:, :count].sum(1) - log_q[:, count] + log_p[count])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-3)


def _grads(model: AIR, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None and
            not k.startswith("baseline.")}


@pytest.mark.parametrize("dair", [False, True])
def test_nvil_expected_gradient_equals_the_exact_gradient(tiny_config, dair):
    """Averaged over every z_pres run with its probability q(run), the NVIL surrogate's gradient is exactly the
    gradient of the ELBO (the enumerated one, for the same continuous latents): the score-function estimator is
    unbiased, whatever its baseline predicts, and only with the right sign and learning signal."""
    model = small_model(tiny_config, dair=dair, z_pres_estimator="nvil")
    x, _ = blob_images(8)
    n = model.config.max_steps
    with torch.no_grad():
        model.baseline.head.last.bias.fill_(37.0)  # a baseline far off: it must not matter in expectation
    torch.manual_seed(11)
    exact = _grads(model, model.enumerated_objective(x, model.guide(x, z_pres=torch.ones(8, n))).loss)
    torch.manual_seed(11)
    q_n = count_log_probs(model.guide(x, z_pres=torch.ones(8, n)).z_pres_logit).exp().detach()
    expected = {k: torch.zeros_like(v) for k, v in exact.items()}
    for count in range(n + 1):
        run = (torch.arange(n) < count).float().expand(8, n)
        torch.manual_seed(11)
        out = model.objective(x, model.guide(x, with_baseline=True, z_pres=run))
        assert torch.allclose(out.per_image_loss.mean(), out.loss)
        for k, g in _grads(model, (q_n[:, count] * out.per_image_loss).mean()).items():
            expected[k] += g
    for k in exact:
        assert torch.allclose(expected[k], exact[k], rtol=1e-3, atol=1e-5), k
