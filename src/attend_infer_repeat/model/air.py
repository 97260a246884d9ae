"""Attend, Infer, Repeat (Eslami et al., 2016): the generative model, the guide and the ELBO, in one file.

Read it in three parts, each in one place:

1. **Generative model** p(x, z) (:meth:`AIR.render`, :meth:`AIR.log_likelihood`, the priors in
   :meth:`AIR.prior`): the number of objects n from its prior (step-wise z_pres), for each object
   ``z_where ~ N(mu_w, sigma_w)`` and ``z_what ~ N(0, I)``; the decoder draws each object in its window,
   the inverse spatial transform puts it on the canvas, the canvas is the sum of the present objects (or, with
   ``composition="max"``, their pixel-wise maximum: :meth:`AIR.overlay`), and
   x ~ N(canvas, sigma^2) (or Bernoulli).
2. **Guide** q(z | x) (:meth:`AIR.guide`, one :meth:`AIR.guide_step` per object and the NVIL
   :meth:`AIR.baseline_step` beside it): an LSTM looks at the image (DAIR: at the image minus the canvas
   drawn so far) and at the previous step's latents, up to N times. Each step proposes
   ``z_pres ~ Bern`` (0 once it has been 0), ``z_where ~ N``, crops that window and encodes it into
   ``z_what ~ N``.
3. **Objective** (:meth:`AIR.loss`): the ELBO ``E_q[log p(x|z)] - KL(q(z|x) || p(z))`` with analytic KL terms,
   masked after the first absent object; reparameterised gradients for z_where and z_what. The discrete z_pres
   has N + 1 possible values (a count n is n ones, then zeros), so by default the ELBO is summed over all of them
   exactly (:meth:`AIR.enumerated_objective`: one guide run serves every count, and the presence probabilities
   get an exact gradient). The paper's estimator is there too (``z_pres_estimator="nvil"``,
   :meth:`AIR.objective`): z_pres sampled, its gradient by the score function with a learned data-dependent
   baseline (NVIL), each step's term using only the costs that step influences. Both estimate the same ELBO of
   the same model; only the variance of the gradient differs.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from . import attention
from .config import ModelConfig
from .networks import Baseline, ImageLSTM, WhatDecoder, WhatEncoder, WherePresPredictor
from .objective import (
    bernoulli_log_prob,
    count_log_prior,
    count_log_probs,
    kl_bernoulli,
    kl_normal,
    previous_present,
    reverse_cumsum,
    score_function_surrogate,
    z_pres_prior_probs,
)
from .outputs import GUIDE_STEP_KEYS, GuideOutput, InferenceResult, LossOutput, eval_mode, ink_boxes


class AIR(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig()
        if cfg.dair is None:  # no data set to take a default from: the paper's plain AIR
            cfg = dataclasses.replace(cfg, dair=False)
        self.config = cfg
        n_pixels = cfg.image_size ** 2
        latent_dim = 3 + cfg.z_what_dim + 1  # the previous step's z_where, z_what, z_pres
        # guide q(z | x)
        self.lstm = ImageLSTM(n_pixels, latent_dim, cfg.lstm_hidden)
        self.predict = WherePresPredictor(cfg.lstm_hidden, cfg.predict_hidden, cfg.z_pres_init_logit,
                                          cfg.z_where_init_std)
        self.encoder = WhatEncoder(cfg.window_size, cfg.encoder_hidden, cfg.z_what_dim)
        # generative model p(x | z)
        self.decoder = WhatDecoder(cfg.z_what_dim, cfg.decoder_hidden, cfg.window_size, cfg.decoder_output_bias)
        # variance reduction for the score-function z_pres gradient (the enumerated ELBO needs none)
        self.baseline = Baseline(n_pixels, latent_dim, cfg.lstm_hidden, cfg.predict_hidden) \
            if cfg.z_pres_estimator == "nvil" else None
        self.register_buffer("where_prior_loc", torch.tensor(
            [cfg.scale_prior_mean, cfg.shift_prior_mean, cfg.shift_prior_mean]), persistent=False)
        self.register_buffer("where_prior_std", torch.tensor(
            [cfg.scale_prior_std, cfg.shift_prior_std, cfg.shift_prior_std]), persistent=False)

    # ------------------------------------------------------------------------------------------------------
    # 1. Generative model p(x, z)
    # ------------------------------------------------------------------------------------------------------
    def prior(self, train_step: int = 0) -> torch.Tensor:
        """p(z_pres_i = 1 | z_pres_{i-1} = 1), i = 1..N (fixed Bernoulli, or truncated geometric on n)."""
        return z_pres_prior_probs(self.config, train_step).to(self.where_prior_loc.device)

    def draw(self, z_what: torch.Tensor, z_where: torch.Tensor):
        """Draw every object in its window and put it on a canvas of its own.

        z_what (B, N, D), z_where (B, N, 3) -> objects (B, N, 1, H, W), windows (B, N, 1, w, w).
        All steps are decoded in one batch."""
        cfg = self.config
        b, n = z_what.shape[:2]
        windows = self.decoder(z_what.reshape(b * n, -1))
        placed = attention.place(windows, z_where.reshape(b * n, 3), cfg.image_size, cfg.min_zoom)
        return (placed.view(b, n, 1, cfg.image_size, cfg.image_size),
                windows.view(b, n, 1, cfg.window_size, cfg.window_size))

    def overlay(self, canvas: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """Put objects on a canvas: their sum (the paper's) or, with ``composition="max"``, the brighter of the
        two at each pixel. Objects are never negative (the decoder ends in a sigmoid), so an absent object
        (all zeros) changes nothing either way."""
        return torch.maximum(canvas, objects) if self.config.composition == "max" else canvas + objects

    def compose(self, objects: torch.Tensor, cumulative: bool = False) -> torch.Tensor:
        """The canvas of objects (B, N, 1, H, W) (absent ones already zeroed): (B, 1, H, W), or with
        ``cumulative`` the canvas after each step (B, N, 1, H, W)."""
        if self.config.composition == "sum":
            return objects.cumsum(1) if cumulative else objects.sum(1)
        return objects.cummax(1).values if cumulative else objects.amax(1)

    def render(self, z_what: torch.Tensor, z_where: torch.Tensor, z_pres: torch.Tensor):
        """The canvas of the present objects. z_pres (B, N) -> canvas (B, 1, H, W), windows."""
        placed, windows = self.draw(z_what, z_where)
        return self.compose(placed * z_pres[:, :, None, None, None]), windows

    def log_likelihood(self, x: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over the pixels (the last three dimensions, C, H, W): (B,), or (B, K) for K
        canvases per image (B, K, 1, H, W) against x (B, 1, 1, H, W)."""
        cfg = self.config
        if cfg.likelihood == "gaussian":
            sigma = cfg.likelihood_sigma
            ll = -0.5 * ((x - canvas) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
        else:  # Bernoulli with the canvas as the probability (objects may overlap, so clamp into (0, 1))
            p = canvas.clamp(1e-4, 1 - 1e-4)
            ll = x * torch.log(p) + (1 - x) * torch.log1p(-p)
        return ll.flatten(-3).sum(-1)

    @torch.no_grad()
    def sample_prior(self, n: int, num_objects: int | None = None, train_step: int = 0,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw n scenes from the generative model. Returns images (n, 1, H, W) (the canvas, i.e. the
        likelihood's mean), z_pres (n, N) and the boxes of every step (n, N, 4)."""
        cfg = self.config
        dev = self.where_prior_loc.device
        if num_objects is None:
            log_p = count_log_prior(cfg, train_step)
            counts = torch.multinomial(log_p.exp(), n, replacement=True, generator=generator).to(dev)
        else:
            if not 0 <= num_objects <= cfg.max_steps:
                from ..errors import InputError
                raise InputError(f"num_objects must be between 0 and max_steps={cfg.max_steps}, got {num_objects}")
            counts = torch.full((n,), num_objects, device=dev)
        z_pres = (torch.arange(cfg.max_steps, device=dev)[None] < counts[:, None]).float()
        z_where = self.where_prior_loc + self.where_prior_std * torch.randn(
            n, cfg.max_steps, 3, generator=generator).to(dev)
        z_what = torch.randn(n, cfg.max_steps, cfg.z_what_dim, generator=generator).to(dev)
        canvas, _ = self.render(z_what, z_where, z_pres)
        return canvas, z_pres, attention.where_to_boxes(z_where, cfg.image_size, cfg.min_zoom)

    # ------------------------------------------------------------------------------------------------------
    # 2. Guide q(z | x)
    # ------------------------------------------------------------------------------------------------------
    def guide(self, x: torch.Tensor, deterministic: bool = False, with_baseline: bool = False,
              z_pres: torch.Tensor | None = None) -> GuideOutput:
        """Run the inference network for N steps over images x (B, 1, H, W).

        ``deterministic``: posterior means for z_where/z_what and z_pres = [p > 0.5] (for inference);
        otherwise samples (reparameterised for z_where and z_what).
        ``z_pres`` (B, N): take these presence values instead of proposing them (still 0 after the first 0).
        With all ones, every count n finds the guide's latents of its n present steps (and the stop probability
        of step n + 1) in this one run, since a step sees only the steps before it: what
        :meth:`enumerated_objective` sums over."""
        cfg = self.config
        b = x.size(0)
        with_baseline = with_baseline and self.baseline is not None
        # What each step looks at, the one place AIR and DAIR differ: AIR sees the image itself at every step
        # (projected once), DAIR the image minus the canvas drawn so far (projected anew each step).
        if cfg.dair:
            canvas, image_proj, bl_proj = torch.zeros_like(x), None, None
        else:
            canvas, image_proj = None, self.lstm.project_image(x.flatten(1))
            bl_proj = self.baseline.lstm.project_image(x.flatten(1)) if with_baseline else None
        state = self.lstm.initial_state(b, x)
        bl_state = self.baseline.lstm.initial_state(b, x) if with_baseline else None
        prev = (x.new_ones(b), x.new_zeros(b, 3), x.new_zeros(b, cfg.z_what_dim))  # z_pres, z_where, z_what
        out: dict[str, list] = {k: [] for k in GUIDE_STEP_KEYS + ("baseline",)}
        steps = []
        for i in range(cfg.max_steps):
            seen = x - canvas if cfg.dair else x
            proj = self.lstm.project_image(seen.flatten(1)) if cfg.dair else image_proj
            given = None if z_pres is None else z_pres[:, i]
            step, latents, state = self.guide_step(seen, proj, prev, state, given, deterministic)
            if with_baseline:
                value, bl_state = self.baseline_step(seen, bl_proj, latents, bl_state)
                out["baseline"].append(value)
            if cfg.dair:  # draw this object now: the next step looks at what is still unexplained
                drawn, _ = self.render(step["z_what"][:, None], step["z_where"][:, None], step["z_pres"][:, None])
                canvas = self.overlay(canvas, drawn)
                steps.append(canvas)
            for k in GUIDE_STEP_KEYS:
                out[k].append(step[k])
            prev = (step["z_pres"], step["z_where"], step["z_what"])
        stacked = {k: torch.stack(v, 1) for k, v in out.items() if v}
        return GuideOutput(**stacked, canvas=canvas, steps=steps or None)

    def guide_step(self, seen: torch.Tensor, proj: torch.Tensor, prev: tuple, state: tuple,
                   given_z_pres: torch.Tensor | None = None, deterministic: bool = False):
        """One step of the guide: from what it sees (``seen``, (B, 1, H, W), and its projection ``proj``) and the
        previous step's (z_pres, z_where, z_what), propose this step's latents. Returns (the step's latents and
        their posterior parameters, the LSTM's latent input, the new LSTM state)."""
        cfg = self.config
        z_pres_prev, z_where_prev, z_what_prev = prev
        latents = torch.cat([z_where_prev, z_what_prev, z_pres_prev[:, None]], -1)
        if not cfg.dair_memory:  # a memoryless DAIR step: what it sees is the residual image, nothing else
            latents, state = torch.zeros_like(latents), self.lstm.initial_state(seen.size(0), seen)
        state = self.lstm(proj, latents, state)

        # z_pres: is there (another) object?  Once 0, always 0.
        logit, where_offset, where_std = self.predict(state[0])
        if given_z_pres is not None:
            z_pres = given_z_pres.to(logit) * z_pres_prev
        elif deterministic:
            z_pres = (logit > 0).to(seen) * z_pres_prev
        else:
            z_pres = torch.bernoulli(torch.sigmoid(logit)).detach() * z_pres_prev
        # z_where: where is it? (the guide predicts an offset from the prior mean)
        where_loc = self.where_prior_loc + where_offset
        z_where = where_loc if deterministic else where_loc + where_std * torch.randn_like(where_loc)
        # z_what: what does it look like? Encode the window that z_where selects.
        glimpse = attention.crop(seen, z_where, cfg.window_size, cfg.min_zoom)
        what_loc, what_std = self.encoder(glimpse)
        z_what = what_loc if deterministic else what_loc + what_std * torch.randn_like(what_loc)
        step = {"z_pres": z_pres, "z_pres_logit": logit, "z_where": z_where, "z_where_loc": where_loc,
                "z_where_std": where_std, "z_what": z_what, "z_what_loc": what_loc, "z_what_std": what_std}
        return step, latents, state

    def baseline_step(self, seen: torch.Tensor, proj: torch.Tensor | None, latents: torch.Tensor, state: tuple):
        """One step of the NVIL baseline: the guide step's inputs, detached, so none of its gradient reaches the
        guide. ``proj`` is the image's projection (AIR), or None to project what this step sees (DAIR).
        Returns (the baseline's value (B,), its new LSTM state)."""
        if proj is None:
            proj = self.baseline.lstm.project_image(seen.detach().flatten(1))
        state = self.baseline.lstm(proj, latents.detach(), state)
        return self.baseline.head(state[0]).float().squeeze(-1), state

    # ------------------------------------------------------------------------------------------------------
    # 3. Objective: the ELBO and its gradient estimator
    # ------------------------------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, train_step: int = 0, use_baseline: bool = True,
             z_pres_prior: torch.Tensor | None = None) -> LossOutput:
        """The ELBO of images x (B, 1, H, W) and the surrogate whose gradient estimates its gradient.

        ELBO = E_q[log p(x | z)] - KL(q(z | x) || p(z)), with every KL analytic given the count:
        log p(x | z) - sum_i z_pres_i [KL(z_where_i) + KL(z_what_i)] - KL(q(n) || p(n)).

        How the discrete z_pres enters (``ModelConfig.z_pres_estimator``): ``enumerate`` sums over the N + 1
        possible counts exactly (:meth:`enumerated_objective`); ``nvil`` samples z_pres and estimates its
        gradient by the score function with the NVIL baseline (:meth:`objective`, the paper's estimator).
        Both are the same ELBO: estimates of it for one sample of the continuous latents.

        ``z_pres_prior``: the prior's p(z_pres_i = 1 | z_pres_{i-1} = 1), (N,), if already computed (the
        trainer passes it, so that a compiled loss sees a tensor instead of a step number that changes);
        default :meth:`prior` at ``train_step``."""
        if self.config.z_pres_estimator == "enumerate":
            q = self.guide(x, z_pres=x.new_ones(x.size(0), self.config.max_steps))
            return self.enumerated_objective(x, q, train_step, z_pres_prior)
        return self.objective(x, self.guide(x, with_baseline=use_baseline), train_step, z_pres_prior)

    def enumerated_objective(self, x: torch.Tensor, q: GuideOutput, train_step: int = 0,
                             z_pres_prior: torch.Tensor | None = None) -> LossOutput:
        """The ELBO with z_pres summed out exactly; q is the guide run with every step present.

        A count n means z_pres = (1, .., 1, 0, ..): the first n objects on the canvas, q(n) = q_1 .. q_n (1 -
        q_{n+1}). With the continuous latents of the n steps drawn once (reparameterised) and shared by all n,

            ELBO = sum_{n=0..N} q(n) [log p(x | z_1..n) - sum_{i<=n} (KL(z_where_i) + KL(z_what_i))]
                   - KL(q(n) || p(n)),

        the expectation the paper's single-sample estimator (:meth:`objective`) estimates, with the sum over the
        N + 1 counts done instead of sampled. Its gradient for the presence logits is therefore exact for the
        drawn continuous latents: no score function, no baseline. It costs N + 1 likelihoods of the image (the
        canvases are cumulative compositions of the objects the decoder draws anyway)."""
        cfg = self.config
        if cfg.dair:  # the canvases after each step, every step present
            objects_so_far = torch.stack(q.steps, 1)
        else:
            objects_so_far = self.compose(self.draw(q.z_what, q.z_where)[0], cumulative=True)
        canvases = torch.cat([torch.zeros_like(objects_so_far[:, :1]), objects_so_far], 1)  # (B, N + 1, 1, H, W)
        log_lik = self.log_likelihood(x[:, None], canvases)  # (B, N + 1): log p(x | the first n objects)

        kl_where = kl_normal(q.z_where_loc, q.z_where_std, self.where_prior_loc, self.where_prior_std).sum(-1)
        kl_what = kl_normal(q.z_what_loc, q.z_what_std, 0.0, 1.0).sum(-1)
        object_cost = kl_where + kl_what  # (B, N)
        object_costs = torch.cat([torch.zeros_like(object_cost[:, :1]), object_cost.cumsum(1)], 1)  # (B, N + 1)
        prior = self.prior(train_step) if z_pres_prior is None else z_pres_prior
        log_q_count = count_log_probs(q.z_pres_logit)  # (B, N + 1)
        log_p_count = count_log_probs(torch.logit(prior.double()).to(log_q_count))  # (N + 1,)
        q_count = log_q_count.exp()
        kl_count = (q_count * (log_q_count - log_p_count)).sum(1)
        elbo = (q_count * (log_lik - object_costs)).sum(1) - kl_count

        present = (q_count.cumsum(1) < 0.5).sum(1)  # the median count under q(n)
        expected = lambda per_step: (q_count[:, 1:].flip(1).cumsum(1).flip(1) * per_step).sum(1).mean()  # noqa: E731
        terms = {"log_lik": (q_count * log_lik).sum(1).mean(), "kl_where": expected(kl_where),
                 "kl_what": expected(kl_what), "kl_pres": kl_count.mean()}
        return LossOutput(loss=-elbo.mean(), baseline_loss=torch.zeros((), device=x.device),
                          elbo=elbo.detach(), counts=present.detach().long(),
                          terms={k: v.detach() for k, v in terms.items()}, per_image_loss=-elbo)

    def objective(self, x: torch.Tensor, q: GuideOutput, train_step: int = 0,
                  z_pres_prior: torch.Tensor | None = None) -> LossOutput:
        """The ELBO and the gradient surrogate for images x given the guide's latents q (see :meth:`loss`)."""
        cfg = self.config
        if cfg.dair:
            canvas = q.canvas
        else:
            canvas, _ = self.render(q.z_what, q.z_where, q.z_pres)
        log_lik = self.log_likelihood(x, canvas)  # (B,)

        present = q.z_pres  # (B, N): z_pres_i
        sampled = previous_present(present)  # z_pres_{i-1}
        kl_where = kl_normal(q.z_where_loc, q.z_where_std, self.where_prior_loc, self.where_prior_std).sum(-1)
        kl_what = kl_normal(q.z_what_loc, q.z_what_std, 0.0, 1.0).sum(-1)
        prior = self.prior(train_step) if z_pres_prior is None else z_pres_prior
        kl_pres = kl_bernoulli(q.z_pres_logit, prior[None])
        object_cost = present * (kl_where + kl_what)  # (B, N)
        pres_cost = sampled * kl_pres  # (B, N)
        elbo = log_lik - object_cost.sum(1) - pres_cost.sum(1)

        # Score function for z_pres_i: only the costs that z_pres_i influences (Rao-Blackwellisation):
        # the likelihood, the object KLs of steps >= i and the z_pres KLs of steps > i.
        signal = log_lik[:, None] - reverse_cumsum(object_cost) - (reverse_cumsum(pres_cost) - pres_cost)
        log_q_pres = bernoulli_log_prob(present, q.z_pres_logit)
        surrogate, baseline_loss = score_function_surrogate(log_q_pres, signal, q.baseline, sampled)

        terms = {"log_lik": log_lik.mean(), "kl_where": (present * kl_where).sum(1).mean(),
                 "kl_what": (present * kl_what).sum(1).mean(), "kl_pres": pres_cost.sum(1).mean()}
        return LossOutput(loss=(-elbo + surrogate).mean(), baseline_loss=baseline_loss.mean(),
                          elbo=elbo.detach(), counts=present.sum(1).detach().long(),
                          terms={k: v.detach() for k, v in terms.items()}, per_image_loss=-elbo + surrogate)

    # ------------------------------------------------------------------------------------------------------
    # Inference API
    # ------------------------------------------------------------------------------------------------------
    def inferred(self, x: torch.Tensor, deterministic: bool = True, refine_steps: int = 0,
                 refine_samples: int = 0) -> tuple:
        """One batch of :meth:`infer`: the guide's latents, the canvas of the present objects, every step's
        window and the box of what each step's object draws."""
        q = self.guide(x, deterministic=deterministic)
        if refine_steps > 0:  # the count with the best refined ELBO, and its refined latents (refine.py)
            from .refine import refine_counts

            refined = refine_counts(self, x, refine_steps, samples=refine_samples)
            n = refined.scores.argmax(1)
            rows = torch.arange(x.size(0), device=x.device)
            z_pres = (torch.arange(self.config.max_steps, device=x.device)[None] < n[:, None]).to(x)
            q = dataclasses.replace(q, z_pres=z_pres, z_where=refined.z_where[rows, n],
                                    z_what=refined.z_what[rows, n])
        placed, windows = self.draw(q.z_what, q.z_where)
        canvas = self.compose(placed * q.z_pres[:, :, None, None, None])
        return q, canvas, windows, ink_boxes(placed[:, :, 0], q.z_where, self.config)

    @torch.no_grad()
    def infer(self, images, batch_size: int = 1000, deterministic: bool = True,
              refine_steps: int = 0, refine_samples: int = 128) -> InferenceResult:
        """Find the objects in images: float tensor (B, 1, H, W) or (B, H, W) in [0, 1], or a uint8 array.

        Deterministic by default (posterior means, z_pres = [p > 0.5]); runs in eval mode without gradients,
        in batches of ``batch_size``; returns tensors on the CPU. ``refine_steps`` > 0: the count (and the
        objects' z_where and z_what) whose ELBO is best after that many steps of refining the guide's latents
        for each count (:mod:`.refine`; slower, for scenes unlike the training scenes), each count's ELBO
        estimated by importance sampling with ``refine_samples`` samples (0: at the refined means);
        ``pres_probs`` and ``object_scores`` stay the guide's."""
        from ..errors import InputError
        from .inputs import as_image_batch

        cfg = self.config
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
            raise InputError(f"refine_steps must be a whole number >= 0, got {refine_steps!r}")
        if refine_steps and not deterministic:
            raise InputError("refine_steps refines the posterior means: use it with deterministic=True")
        if isinstance(refine_samples, bool) or not isinstance(refine_samples, int) or refine_samples < 0:
            raise InputError(f"refine_samples must be a whole number >= 0, got {refine_samples!r}")
        x_all = as_image_batch(images, cfg.image_size)
        dev = self.where_prior_loc.device
        parts = []
        with eval_mode(self):
            for i in range(0, x_all.size(0), batch_size):
                x = x_all[i:i + batch_size].to(dev)  # (the grid model, which shares this method, never refines)
                parts.append(self.inferred(x, deterministic, refine_steps, refine_samples) if refine_steps else
                             self.inferred(x, deterministic))
        cat = lambda f: torch.cat([f(p) for p in parts]).cpu() if parts else torch.empty(0)  # noqa: E731
        z_pres = cat(lambda p: p[0].z_pres)
        if not parts:
            z_pres = torch.zeros(0, cfg.max_steps)
        z_where = cat(lambda p: p[0].z_where).view(-1, cfg.max_steps, 3)
        z_what = cat(lambda p: p[0].z_what).view(-1, cfg.max_steps, cfg.z_what_dim)
        step_boxes = attention.where_to_boxes(z_where, cfg.image_size, cfg.min_zoom)
        step_object_boxes = cat(lambda p: p[3]).view(-1, cfg.max_steps, 4)
        keep = z_pres.bool()
        pres_probs = cat(lambda p: torch.sigmoid(p[0].z_pres_logit)).view(-1, cfg.max_steps)
        reach = self.slot_presence(pres_probs)
        return InferenceResult(
            counts=z_pres.sum(1).long(),
            boxes=[step_boxes[j][keep[j]] for j in range(z_pres.size(0))],
            object_boxes=[step_object_boxes[j][keep[j]] for j in range(z_pres.size(0))],
            z_what=[z_what[j][keep[j]] for j in range(z_pres.size(0))],
            z_where=[z_where[j][keep[j]] for j in range(z_pres.size(0))],
            pres_probs=pres_probs,
            reconstruction=cat(lambda p: p[1]).view(-1, 1, cfg.image_size, cfg.image_size),
            step_windows=cat(lambda p: p[2] * p[0].z_pres[:, :, None, None, None]).view(
                -1, cfg.max_steps, 1, cfg.window_size, cfg.window_size),
            step_boxes=step_boxes, z_pres=z_pres,
            object_scores=[reach[j][keep[j]] for j in range(z_pres.size(0))])

    def slot_presence(self, pres_probs: torch.Tensor) -> torch.Tensor:
        """q that each step holds an object (B, N), from the step-wise q(z_pres_i = 1 | z_pres_{i-1} = 1): that
        it and every step before it are present."""
        return pres_probs.cumprod(1)

    @torch.no_grad()
    def count_probs(self, images, batch_size: int = 1000) -> torch.Tensor:
        """q(n | x) for n = 0..N, (B, N + 1): the guide's distribution of the count, exact in z_pres, for one
        sample of the continuous latents (so its mean over images is an unbiased estimate of E_q[...]).

        ``count_probs(x)[i, n_true[i]]`` averaged is the *sampled* count accuracy, E_q[n = n_true], as Pyro
        and Dittadi measure it by sampling; :meth:`infer` gives the deterministic count."""
        from .inputs import as_image_batch

        x_all = as_image_batch(images, self.config.image_size)
        dev = self.where_prior_loc.device
        out = []
        with eval_mode(self):
            for i in range(0, x_all.size(0), batch_size):
                x = x_all[i:i + batch_size].to(dev)
                q = self.guide(x, z_pres=x.new_ones(x.size(0), self.config.max_steps))
                out.append(count_log_probs(q.z_pres_logit).exp().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.config.max_steps + 1)

    #: reads a checkpoint file into a model: the checkpoint format belongs to the package, not to the paper's
    #: model, so ``attend_infer_repeat/__init__.py`` installs ``checkpoint.load_model`` here (the model package
    #: never imports the rest of the package)
    loader = None

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "AIR":
        """Load a model from any checkpoint ``air train`` wrote (loaded safely, without running code)."""
        return cls.loader(path, device=device)
