"""Semi-amortised count inference (model/refine.py, AIR.infer(refine_steps=...)): what it scores, that it only
ever improves on the guide, that it leaves the model alone, and what it refuses."""
import dataclasses

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from attend_infer_repeat.errors import InputError
from attend_infer_repeat.model import AIR, eval_mode
from attend_infer_repeat.model.objective import count_log_probs
from attend_infer_repeat.model.refine import count_score, importance_score, refine_counts, starts


@pytest.fixture
def model(tiny_config):
    torch.manual_seed(3)
    return AIR(dataclasses.replace(tiny_config, likelihood_sigma=0.3)).eval()


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(6, 1, 20, 20)
    for i in range(6):  # a bright square or two in each image
        for _ in range(1 + i % 2):
            r, c = torch.randint(0, 14, (2,), generator=g).tolist()
            x[i, 0, r:r + 6, c:c + 6] = 0.9
    return x


def test_count_score_is_the_count_elbo_term(model, images):
    """score(n): the Gaussian log-likelihood of the first n objects' canvas minus their KLs, against
    torch.distributions (not the code under test)."""
    x = images
    with torch.no_grad():
        q = model.guide(x, deterministic=True, z_pres=x.new_ones(x.size(0), model.config.max_steps))
        for n in range(model.config.max_steps + 1):
            got = count_score(model, x, q.z_where_loc, q.z_what_loc, q.z_where_std, q.z_what_std, n)
            canvas = model.draw(q.z_what_loc[:, :n], q.z_where_loc[:, :n])[0].sum(1) if n else torch.zeros_like(x)
            want = Normal(canvas, 0.3).log_prob(x).sum((1, 2, 3))
            if n:
                prior_where = Normal(model.where_prior_loc, model.where_prior_std)
                want = want - kl_divergence(Normal(q.z_where_loc[:, :n], q.z_where_std[:, :n]),
                                            prior_where).sum((1, 2))
                want = want - kl_divergence(Normal(q.z_what_loc[:, :n], q.z_what_std[:, :n]),
                                            Normal(0.0, 1.0)).sum((1, 2))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_refining_never_lowers_a_count_score_and_improves_a_wrong_guide(model, images):
    with torch.no_grad():
        start = refine_counts(model, images, steps=0).scores
    refined, wheres, whats, where_std, what_std = refine_counts(model, images, steps=30)
    assert refined.shape == start.shape == (6, model.config.max_steps + 1)
    assert torch.all(refined >= start - 1e-4)
    torch.testing.assert_close(refined[:, 0], start[:, 0])  # nothing to refine without objects
    assert (refined[:, 1:] > start[:, 1:] + 1.0).float().mean() > 0.9  # an untrained guide is far from its best
    # each count's row holds the latents (and the stds of the start they came from) its score was computed from
    log_prior = count_log_probs(torch.logit(model.prior(0).double()).float())
    for n in range(1, model.config.max_steps + 1):
        with torch.no_grad():
            again = count_score(model, images, wheres[:, n], whats[:, n], where_std[:, n], what_std[:, n], n)
        torch.testing.assert_close(again + log_prior[n], refined[:, n], rtol=1e-4, atol=1e-2)


def test_infer_with_refinement_takes_the_best_refined_count_and_leaves_the_model_alone(model, images):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with eval_mode(model):
        scores, wheres = refine_counts(model, images, steps=20, samples=128)[:2]
    result = model.infer(images, refine_steps=20)  # 128 importance samples per count by default
    assert torch.equal(result.counts, scores.argmax(1))
    for i, n in enumerate(result.counts.tolist()):
        assert result.z_pres[i].tolist() == [1.0] * n + [0.0] * (model.config.max_steps - n)
        assert len(result.boxes[i]) == n
        torch.testing.assert_close(result.z_where[i], wheres[i, n, :n])
    assert torch.equal(model.infer(images, refine_steps=20).counts, result.counts)  # deterministic
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def _canvas(model, z_where, z_what, n, like):
    return model.draw(z_what[:, :n], z_where[:, :n])[0].sum(1) if n else torch.zeros_like(like)


@pytest.mark.parametrize("canvases", [3, 12, 10_000])  # blocks of images, of samples, and one block
def test_importance_score_is_the_importance_weighted_estimate(model, images, canvases):
    """log (1/S) sum_s p(x | z_s) p(z_s) / q(z_s), against torch.distributions, for each count, however the
    images and samples are split into blocks, with each image's own noise or one noise shared by all."""
    x = images
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        q = model.guide(x, deterministic=True, z_pres=x.new_ones(x.size(0), model.config.max_steps))
        eps_where = torch.randn((7,) + q.z_where_std.shape, generator=g)
        eps_what = torch.randn((7,) + q.z_what_std.shape, generator=g)
        for n in range(model.config.max_steps + 1):
            got = importance_score(model, x, q.z_where_loc, q.z_what_loc, q.z_where_std, q.z_what_std, n,
                                   eps_where, eps_what, canvases=canvases)
            shared = importance_score(model, x, q.z_where_loc, q.z_what_loc, q.z_where_std, q.z_what_std, n,
                                      eps_where[:, :1], eps_what[:, :1], canvases=canvases)
            alone = [importance_score(model, x[i:i + 1], q.z_where_loc[i:i + 1], q.z_what_loc[i:i + 1],
                                      q.z_where_std[i:i + 1], q.z_what_std[i:i + 1], n,
                                      eps_where[:, :1], eps_what[:, :1]) for i in range(x.size(0))]
            torch.testing.assert_close(shared, torch.cat(alone), rtol=1e-5, atol=1e-3)
            log_w = []
            for s in range(7):
                zw = q.z_where_loc + q.z_where_std * eps_where[s]
                zh = q.z_what_loc + q.z_what_std * eps_what[s]
                lw = Normal(_canvas(model, zw, zh, n, x), 0.3).log_prob(x).sum((1, 2, 3))
                if n:
                    lw = lw + Normal(model.where_prior_loc, model.where_prior_std).log_prob(zw[:, :n]).sum((1, 2))
                    lw = lw + Normal(0.0, 1.0).log_prob(zh[:, :n]).sum((1, 2))
                    lw = lw - Normal(q.z_where_loc[:, :n], q.z_where_std[:, :n]).log_prob(zw[:, :n]).sum((1, 2))
                    lw = lw - Normal(q.z_what_loc[:, :n], q.z_what_std[:, :n]).log_prob(zh[:, :n]).sum((1, 2))
                log_w.append(lw)
            want = torch.logsumexp(torch.stack(log_w), 0) - torch.log(torch.tensor(7.0))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-2)
            # Jensen: the log of the mean weight is at least the mean log weight (the ELBO of the same samples)
            assert torch.all(got >= torch.stack(log_w).mean(0) - 1e-3)


def test_an_images_refined_count_does_not_depend_on_its_batch(model, images):
    """The importance samples' noise is shared by every image, so splitting a batch changes nothing."""
    whole = model.infer(images, refine_steps=5)
    parts = model.infer(images, refine_steps=5, batch_size=2)
    assert torch.equal(whole.counts, parts.counts)
    torch.testing.assert_close(whole.z_where, parts.z_where)


def test_refined_counts_scored_at_the_means_without_samples(model, images):
    with eval_mode(model):
        scores = refine_counts(model, images, steps=5).scores
    assert torch.equal(model.infer(images, refine_steps=5, refine_samples=0).counts, scores.argmax(1))


@pytest.mark.parametrize("samples", [-1, 2.5, True, "10"])
def test_infer_refuses_a_bad_number_of_refine_samples(model, images, samples):
    with pytest.raises(InputError, match="refine_samples"):
        model.infer(images, refine_steps=3, refine_samples=samples)


@pytest.mark.parametrize("steps", [-1, 2.5, True, "10"])
def test_infer_refuses_a_bad_number_of_refine_steps(model, images, steps):
    with pytest.raises(InputError, match="refine_steps"):
        model.infer(images, refine_steps=steps)


def test_infer_refuses_refinement_of_samples(model, images):
    with pytest.raises(InputError, match="deterministic"):
        model.infer(images, deterministic=False, refine_steps=5)


def test_the_grid_model_refuses_refinement(tiny_config, images):
    from attend_infer_repeat.model import build_model

    grid = build_model(dataclasses.replace(tiny_config, architecture="grid", grid_size=2))
    with pytest.raises(InputError, match="grid"):
        grid.infer(images, refine_steps=5)


def test_difference_air_is_refined_by_the_same_generative_model(tiny_config, images):
    """DAIR's guide differs, its generative model does not: the refined scores compose the drawn objects."""
    torch.manual_seed(4)
    dair = AIR(dataclasses.replace(tiny_config, dair=True)).eval()
    with torch.no_grad():
        start = refine_counts(dair, images, steps=0).scores
    refined = refine_counts(dair, images, steps=10).scores
    assert torch.all(refined >= start - 1e-4)
    assert torch.equal(dair.infer(images, refine_steps=10, refine_samples=0).counts, refined.argmax(1))


def test_each_count_starts_from_every_way_of_keeping_n_of_the_first_n_plus_one_proposals():
    assert starts(0, 3) == [()]
    assert starts(1, 3) == [(0,), (1,)]
    assert starts(2, 3) == [(0, 1), (0, 2), (1, 2)]
    assert starts(3, 3) == [(0, 1, 2)]
    assert starts(2, 2) == [(0, 1)]
    assert all(len(set(s)) == 3 and max(s) <= 3 for s in starts(3, 5))


class WastedFirstStep(AIR):
    """AIR whose guide spends its first step on a window off the canvas: count 1 is found only from step 2."""

    def guide(self, x, *args, **kwargs):
        q = super().guide(x, *args, **kwargs)
        loc = q.z_where_loc.clone()
        loc[:, 0] = torch.tensor([4.0, 3.0, 3.0])
        return dataclasses.replace(q, z_where_loc=loc, z_where=loc)


def test_a_count_is_found_from_a_start_without_the_guides_wasted_step(model, images):
    """Count 1's score is the better of steps 1 and 2 alone, its latents and stds those of the better one."""
    wasted = WastedFirstStep(model.config).eval()
    wasted.load_state_dict(model.state_dict())
    x = images
    with torch.no_grad():
        q = wasted.guide(x, deterministic=True, z_pres=x.new_ones(x.size(0), model.config.max_steps))
        alone = [count_score(wasted, x, q.z_where_loc[:, [i]], q.z_what_loc[:, [i]], q.z_where_std[:, [i]],
                             q.z_what_std[:, [i]], 1) for i in (0, 1)]
        got = refine_counts(wasted, x, steps=0, leftover=False)  # the guide's starts alone
    log_prior = count_log_probs(torch.logit(model.prior(0).double()).float())
    torch.testing.assert_close(got.scores[:, 1] - log_prior[1], torch.maximum(*alone))
    from_second = alone[1] > alone[0]
    assert from_second.any()  # a window off the canvas explains nothing: the second step's is better somewhere
    torch.testing.assert_close(got.z_where[from_second, 1, 0], q.z_where_loc[from_second, 1])
    torch.testing.assert_close(got.where_std[from_second, 1, 0], q.z_where_std[from_second, 1])
    torch.testing.assert_close(got.z_where[~from_second, 1, 0], q.z_where_loc[~from_second, 0])


def test_the_leftover_start_puts_a_window_on_the_ink_nothing_explains(model):
    """With nothing drawn yet (count 1), the new window is centred on the one square, as large as the guide's
    first window, and its z_what is the guide's encoding of that window; the slots before it are untouched."""
    from attend_infer_repeat.model import attention
    from attend_infer_repeat.model.refine import leftover_start

    x = torch.zeros(2, 1, 20, 20)
    x[0, 0, 2:8, 12:18] = 0.9  # centre: row 4.5, column 14.5 -> normalised (0.5, -0.5)
    x[1, 0, 13:19, 1:7] = 0.9  # centre: row 15.5, column 3.5 -> normalised (-0.6, 0.6)
    with torch.no_grad():
        q = model.guide(x, deterministic=True, z_pres=x.new_ones(2, model.config.max_steps))
        guide = (q.z_where_loc, q.z_what_loc, q.z_where_std, q.z_what_std)
        z_where, z_what, where_std, what_std = leftover_start(model, x, *guide, 1, q.z_where_loc[:, 0, 0])
        torch.testing.assert_close(z_where[:, 0, 1:], torch.tensor([[0.5, -0.5], [-0.6, 0.6]]))
        torch.testing.assert_close(z_where[:, 0, 0], q.z_where_loc[:, 0, 0])
        loc, std = model.encoder(attention.crop(x, z_where[:, 0], model.config.window_size, model.config.min_zoom))
    torch.testing.assert_close(z_what[:, 0], loc)
    torch.testing.assert_close(what_std[:, 0], std)
    torch.testing.assert_close(where_std, q.z_where_std)
    for new, old in zip((z_where, z_what), guide[:2]):
        torch.testing.assert_close(new[:, 1:], old[:, 1:])


class OneLook(AIR):
    """AIR whose guide finds one object at most: every step after the first looks off the canvas."""

    def guide(self, x, *args, **kwargs):
        q = super().guide(x, *args, **kwargs)
        loc = q.z_where_loc.clone()
        loc[:, 1:] = torch.tensor([4.0, 3.0, 3.0])
        return dataclasses.replace(q, z_where_loc=loc, z_where=loc)


def test_a_digit_every_proposal_misses_is_found_from_the_leftover_start(model, images):
    """Every start of count 2 from the guide holds a window off the canvas; the leftover start puts one on the
    second square instead, so count 2 scores better (never worse) with it, and refinement raises it further."""
    blind = OneLook(model.config).eval()
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        without = refine_counts(blind, images, steps=0, leftover=False).scores
        with_it = refine_counts(blind, images, steps=0).scores
    assert torch.all(with_it >= without - 1e-4)
    two = torch.arange(6) % 2 == 1  # the images with two squares
    assert torch.all(with_it[two, 2] > without[two, 2] + 1.0)
    refined = refine_counts(blind, images, steps=20).scores
    assert torch.all(refined[two, 2] >= with_it[two, 2] - 1e-4)
