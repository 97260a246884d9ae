"""A parallel object model of the SPAIR / SPACE family beside AIR: a grid of cells instead of a recurrent loop.

AIR finds objects one after another, an LSTM step per object, so its cost grows with the number of objects. The
successors (SPAIR: Crawford & Pineau, AAAI 2019, "Spatially Invariant Unsupervised Object Detection with
Convolutional Neural Networks"; SPACE: Lin et al., ICLR 2020) let a convolutional network look at the whole image
once and give every cell of a G x G grid its own object slot. This module is that, told in AIR's terms and built
from AIR's parts (the spatial transformer, the what-encoder and -decoder, the likelihood, the KL terms), in three
places as :mod:`.air` is:

1. **Generative model** p(x, z) (:meth:`GridAIR.render`, :meth:`GridAIR.log_likelihood`, :meth:`GridAIR.sample_prior`):
   every cell k = 1..G^2 holds an object with probability rho (``z_pres_k ~ Bern(rho)``, independently; rho is
   annealed during training from ``z_pres_prior_p`` to ``grid_prior_final``, as the paper anneals AIR's count
   prior); a present object has a zoom ``s ~ N(mu_s, sigma_s)``, a centre ``cell centre + (1 / G) tanh(u)``
   with ``u ~ N(0, I_2)`` (inside its own cell, as SPAIR's and SPACE's: each object belongs to the cell its centre
   lies in, so two cells cannot both centre on one digit) and ``z_what ~ N(0, I)``; each is drawn by the decoder
   in its window and put on the canvas by the inverse transform, within a patch around its cell (:class:`Patches`:
   windows up to ``grid_reach`` times the prior's are drawn whole, wider ones cut at the patch's edge, so that a
   cell's object costs its patch, not a whole canvas); the canvas is their sum (or pixel-wise maximum);
   x ~ N(canvas, sigma^2) (or Bernoulli). The count n is the number of present cells.
2. **Guide** q(z | x) (:meth:`GridAIR.guide`): a CNN maps the image to a G x G feature map, and from each cell's
   features a small head proposes that cell's ``z_pres`` probability and the Gaussian posterior of ``(s, u)``;
   the window it selects is cropped (all cells at once) and encoded into ``z_what``. Every cell is independent
   given the image: the cost is the same for 1 or 20 objects.
3. **Objective** (:meth:`GridAIR.loss`): the ELBO ``E_q[log p(x|z)] - KL(q || p)`` with analytic KL terms
   (Bernoulli for every cell's z_pres, Gaussian for ``(s, u)`` and ``z_what`` of the present ones).
   The discrete z_pres are not relaxed (SPAIR and SPACE train with a Concrete relaxation; the model they then
   evaluate is not the one they trained). Here each cell's z_pres is summed out exactly given the others'
   sample: a *local expectation gradient* (Titsias & Lazaro-Gredilla, NeurIPS 2015). For cell k,
   ``E_q[f] = E_{z_-k}[q_k f(z_k = 1, z_-k) + (1 - q_k) f(z_k = 0, z_-k)]``, so with one sample of the others,
   cell k's presence probability gets the gradient ``f(1, z_-k) - f(0, z_-k)``, the ELBO's change when its object
   is added to the canvas of the others, and its continuous latents the gradient of ``q_k f(1, z_-k)``, whether
   or not it was sampled present. Unbiased, no score function, no baseline, no temperature; it costs one more
   likelihood of the image per cell, computed in one batch.

What is left out of the successors, and why: SPACE's background model (the scenes here have none); a depth per
object to order overlaps, which matters for coloured objects only: a single-channel object drawn as ink of its
own intensity over black gives the same canvas in any order (``1 - prod(1 - alpha_k)`` for alpha compositing,
and the sum or the maximum here); SPAIR's feeding of each cell's latents to its neighbours (its inference is
then sequential over cells again).

It answers to the same interface as :class:`~.air.AIR` (``guide``, ``draw``, ``compose``, ``render``, ``loss``,
``infer``, ``count_probs``, ``sample_prior``), with ``config.max_steps`` its number of cells, so training,
evaluation, the report and ``air serve`` take it as they take AIR.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import attention
from .air import AIR
from .config import ModelConfig
from .networks import WhatDecoder, WhatEncoder, _softplus_inverse
from .objective import bernoulli_log_prob, kl_bernoulli, kl_normal, normal_log_prob
from .outputs import GuideOutput, InferenceResult, LossOutput, eval_mode, ink_boxes

#: every cell's presence logit at the start (p = 0.12): with AIR's start (p = 0.88) dozens of faint new objects
#: cover the canvas, every cell's object makes the fit worse, and all cells turn off for good within 100 steps
#: (benchmarks/results/grid_probes.json)
INIT_LOGIT = -2.0


class GridEncoder(nn.Module):
    """Image (B, 1, H, W) -> the per-cell proposal (B, G*G, 7): z_pres logit, (s, u_x, u_y) loc offsets and raw
    stds. Four convolutions (receptive field 26 px before the pooling to G x G, which widens it by a cell)."""

    def __init__(self, cfg: ModelConfig, channels: int = 32):
        super().__init__()
        self.grid = cfg.grid_size
        self.features = nn.Sequential(
            nn.Conv2d(1, channels // 2, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(channels // 2, channels, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(channels, cfg.predict_hidden, 1), nn.ReLU(),
                                  nn.Conv2d(cfg.predict_hidden, 7, 1))
        last = self.head[-1]
        with torch.no_grad():  # every cell starts with the same proposal, as AIR's WherePresPredictor does
            last.weight.mul_(0.1)
            last.bias.zero_()
            last.bias[0] = INIT_LOGIT
            last.bias[4:] = _softplus_inverse(cfg.z_where_init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.features(x), self.grid)
        return self.head(h).float().flatten(2).transpose(1, 2)  # (B, G*G, 7), cells in row-major order


class Patches:
    """Where each cell draws: a square patch of ``size`` pixels around the cell, wide enough for the cell plus
    half of the widest window drawn whole (``grid_reach`` times the zoom prior's) on each side. The canvas is
    padded by the patches' overhang to ``side`` x ``side`` pixels (the image in the middle), so that every patch
    pixel has an index (``index``, (K, P * P), cells in row-major order) and the canvas of all objects is one
    scatter of their patches; pixels of a patch outside the image (``inside`` 0) stay empty."""

    def __init__(self, cfg: ModelConfig):
        h, g = cfg.image_size, cfg.grid_size
        cell = h / g
        self.margin = math.ceil(cfg.grid_reach * h / cfg.scale_prior_mean / 2)
        self.size = math.ceil(cell) + 1 + 2 * self.margin
        self.image_size, self.side = h, h + 2 * self.margin + 2
        first = torch.floor(torch.arange(g) * cell).long() - self.margin  # each cell's patch begins here
        pixels = first[:, None] + torch.arange(self.size)  # (G, P) canvas pixels along either axis
        coords = (2 * pixels.float() + 1) / h - 1  # their centres in normalised image coordinates
        inside = ((pixels >= 0) & (pixels < h)).float()
        row, col = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        row, col = row.flatten(), col.flatten()  # cell k = (row, col)
        self.columns, self.rows = coords[col], coords[row]  # (K, P)
        self.inside = (inside[row][:, :, None] * inside[col][:, None, :]).flatten(1)
        self.origin = torch.stack([first[col], first[row]], -1).float()  # (K, 2): each patch's top-left (x, y)
        at = pixels + self.margin  # indices into the padded canvas
        self.index = (at[row][:, :, None] * self.side + at[col][:, None, :]).flatten(1)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, H, W) -> the padded canvas's pixels (B, S)."""
        after = self.side - self.image_size - self.margin
        return F.pad(x[:, 0], (self.margin, after, self.margin, after)).flatten(1)

    def crop(self, canvas: torch.Tensor) -> torch.Tensor:
        """Padded canvases (..., S) -> the image's pixels (..., 1, H, W)."""
        m, h = self.margin, self.image_size
        return canvas.unflatten(-1, (self.side, self.side))[..., None, m:m + h, m:m + h]


class GridAIR(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        cfg = config or ModelConfig(architecture="grid")
        if cfg.architecture != "grid":
            raise ValueError(f"GridAIR needs ModelConfig(architecture='grid'), got {cfg.architecture!r}")
        self.config = cfg
        g = cfg.grid_size
        self.propose = GridEncoder(cfg)
        self.encoder = WhatEncoder(cfg.window_size, cfg.encoder_hidden, cfg.z_what_dim)
        self.decoder = WhatDecoder(cfg.z_what_dim, cfg.decoder_hidden, cfg.window_size, cfg.decoder_output_bias)
        self.baseline = None  # no score function, so no baseline (the trainer's second optimiser stays empty)
        centres = -1 + (2 * torch.arange(g, dtype=torch.float32) + 1) / g
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("cell_centres", torch.stack([cx.flatten(), cy.flatten()], -1), persistent=False)
        self.register_buffer("where_prior_loc", torch.tensor([cfg.scale_prior_mean, 0.0, 0.0]), persistent=False)
        self.register_buffer("where_prior_std", torch.tensor([cfg.scale_prior_std, 1.0, 1.0]), persistent=False)
        # (ratio, 1, 1): the zoom's offsets and stds in the scale of the canvas the weights were trained on
        # (for_canvas); 1 for a model on its own canvas
        self.register_buffer("zoom_scale", torch.ones(3), persistent=False)
        patches = Patches(cfg)
        self.patch = patches
        self.register_buffer("patch_columns", patches.columns, persistent=False)  # (K, P)
        self.register_buffer("patch_rows", patches.rows, persistent=False)  # (K, P)
        self.register_buffer("patch_inside", patches.inside, persistent=False)  # (K, P * P)
        self.register_buffer("patch_index", patches.index, persistent=False)  # (K, P * P)
        self.register_buffer("patch_origin", patches.origin, persistent=False)  # (K, 2)

    @property
    def cells(self) -> int:
        return self.config.max_steps

    # ------------------------------------------------------------------------------------------------------
    # 1. Generative model p(x, z)
    # ------------------------------------------------------------------------------------------------------
    def prior(self, train_step: int = 0) -> torch.Tensor:
        """p(z_pres_k = 1) of every cell at a training step, (1,): log-linear from ``z_pres_prior_p`` at step 0
        to ``grid_prior_final`` at ``grid_prior_anneal_steps``, then constant (the final prior when evaluating
        a model on its own, train_step 0, is the trainer's business: it passes its step)."""
        cfg = self.config
        f = min(1.0, train_step / cfg.grid_prior_anneal_steps) if cfg.grid_prior_anneal_steps else 1.0
        rho = math.exp((1 - f) * math.log(cfg.z_pres_prior_p) + f * math.log(cfg.grid_prior_final))
        return torch.tensor([rho], device=self.cell_centres.device)

    def where(self, su: torch.Tensor) -> torch.Tensor:
        """(s, u_x, u_y) (B, K, 3) -> z_where (s, x, y): each cell's centre plus at most half a cell width."""
        offset = (1.0 / self.config.grid_size) * torch.tanh(su[..., 1:])
        return torch.cat([su[..., :1], self.cell_centres + offset], -1)

    # the canvas and the likelihood are AIR's: the same generative story from here on
    overlay = AIR.overlay
    compose = AIR.compose
    log_likelihood = AIR.log_likelihood

    def draw_patches(self, z_what: torch.Tensor, z_where: torch.Tensor,
                     windows: torch.Tensor | None = None) -> torch.Tensor:
        """Every cell's object on its patch of the canvas: z_what (B, K, D), z_where (B, K, 3) -> (B, K, P * P)
        (zero outside the image). The same drawing as AIR's (:func:`.attention.place`), at the patch's pixels.
        ``windows``: the decoder's windows of z_what (B, K, 1, w, w), where the caller has them already."""
        cfg, (b, k) = self.config, z_what.shape[:2]
        w = cfg.window_size
        windows = self.decoder(z_what.reshape(b * k, -1)) if windows is None else windows.reshape(b * k, 1, w, w)
        placed = attention.place_at(windows, self.placement(windows, z_where.reshape(b * k, 3)),
                                    self.patch_columns.repeat(b, 1), self.patch_rows.repeat(b, 1), cfg.min_zoom)
        return placed.view(b, k, -1) * self.patch_inside

    def placement(self, windows: torch.Tensor, z_where: torch.Tensor) -> torch.Tensor:
        """Where each window (B, 1, w, w) is drawn, (B, 3): at z_where, or with ``grid_centre_ink`` shifted so
        that the centre of its ink lands on z_where's centre (an empty window stays where it is)."""
        if not self.config.grid_centre_ink:
            return z_where
        w = windows.size(-1)
        u = (2 * torch.arange(w, dtype=windows.dtype, device=windows.device) + 1) / w - 1
        ink = windows[:, 0]
        mass = ink.sum((1, 2)) + 1e-3
        centre = torch.stack([(ink.sum(1) * u).sum(1), (ink.sum(2) * u).sum(1)], -1) / mass[:, None]
        s = attention.safe_zoom(z_where[:, :1], self.config.min_zoom)
        return torch.cat([z_where[:, :1], z_where[:, 1:] - centre / s], -1)

    def canvas_of(self, patches: torch.Tensor) -> torch.Tensor:
        """The canvas of present objects' patches (B, K, P * P): (B, S) on the padded canvas (``self.patch``)."""
        b = patches.size(0)
        index = self.patch_index.flatten().expand(b, -1)
        base = patches.new_zeros(b, self.patch.side ** 2)
        if self.config.composition == "sum":
            return base.scatter_add(1, index, patches.flatten(1))
        return base.scatter_reduce(1, index, patches.flatten(1), "amax")  # objects are >= 0: zeros are neutral

    def draw(self, z_what: torch.Tensor, z_where: torch.Tensor):
        """As :meth:`AIR.draw`: each object on a canvas of its own (B, N, 1, H, W), and the windows. For the
        cells' objects (N = K) these are the patches put on whole canvases; other N (the report draws single
        objects) are drawn as AIR draws them."""
        if z_where.size(1) != self.cells:
            if not self.config.grid_centre_ink:
                return AIR.draw(self, z_what, z_where)
            b, n, w = *z_what.shape[:2], self.config.window_size
            windows = self.decoder(z_what.reshape(b * n, -1))
            at = self.placement(windows, z_where.reshape(b * n, 3)).view(b, n, 3)
            return AIR.draw(self, z_what, at)
        b, k, w = *z_what.shape[:2], self.config.window_size
        patches = self.draw_patches(z_what, z_where)
        whole = patches.new_zeros(b, k, self.patch.side ** 2).scatter(2, self.patch_index.expand(b, -1, -1), patches)
        windows = self.decoder(z_what.reshape(b * k, -1)).view(b, k, 1, w, w)
        return self.patch.crop(whole), windows

    def render(self, z_what: torch.Tensor, z_where: torch.Tensor, z_pres: torch.Tensor):
        """As :meth:`AIR.render`: the canvas of the present objects (B, 1, H, W), and the windows."""
        if z_where.size(1) != self.cells:
            placed, windows = self.draw(z_what, z_where)
            return self.compose(placed * z_pres[:, :, None, None, None]), windows
        b, k, w = *z_what.shape[:2], self.config.window_size
        windows = self.decoder(z_what.reshape(b * k, -1)).view(b, k, 1, w, w)
        canvas = self.patch.crop(self.canvas_of(self.draw_patches(z_what, z_where, windows) * z_pres[..., None]))
        return canvas, windows

    @torch.no_grad()
    def sample_prior(self, n: int, num_objects: int | None = None, train_step: int = 0,
                     generator: torch.Generator | None = None):
        """n scenes from the generative model: images (n, 1, H, W), z_pres (n, K) and every cell's box (n, K, 4).
        ``num_objects``: exactly that many present cells, chosen uniformly."""
        cfg, dev = self.config, self.cell_centres.device
        if num_objects is None:
            z_pres = (torch.rand(n, self.cells, generator=generator) < cfg.z_pres_prior_p).float()
        else:
            if not 0 <= num_objects <= self.cells:
                from ..errors import InputError
                raise InputError(f"num_objects must be between 0 and {self.cells} (the cells), got {num_objects}")
            order = torch.rand(n, self.cells, generator=generator).argsort(1)
            z_pres = (order < num_objects).float()
        su = self.where_prior_loc + self.where_prior_std * torch.randn(n, self.cells, 3, generator=generator)
        z_where = self.where(su.to(dev))
        z_what = torch.randn(n, self.cells, cfg.z_what_dim, generator=generator).to(dev)
        canvas, _ = self.render(z_what, z_where, z_pres.to(dev))
        return canvas, z_pres.to(dev), attention.where_to_boxes(z_where, cfg.image_size, cfg.min_zoom)

    # ------------------------------------------------------------------------------------------------------
    # 2. Guide q(z | x): every cell at once
    # ------------------------------------------------------------------------------------------------------
    def guide(self, x: torch.Tensor, deterministic: bool = False, with_baseline: bool = False,
              z_pres: torch.Tensor | None = None) -> GuideOutput:
        """The latents of every cell of images x (B, 1, H, W); ``deterministic``: posterior means and z_pres =
        [q > 0.5]; ``z_pres`` (B, K): take these presence values instead of sampling them. ``z_where_loc`` and
        ``z_where_std`` are the posterior of ``(s, u)``; ``z_where`` is (s, x, y). (``with_baseline``: AIR's
        signature; the grid model has no baseline.)"""
        cfg = self.config
        b, k = x.size(0), self.cells
        out = self.propose(x)
        logit = out[..., 0]
        su_loc = self.where_prior_loc + out[..., 1:4] * self.zoom_scale
        su_std = (F.softplus(out[..., 4:7]) + 1e-4) * self.zoom_scale
        su = su_loc if deterministic else su_loc + su_std * torch.randn_like(su_loc)
        z_where = self.where(su)
        glimpses = attention.crop_many(x, z_where, cfg.window_size, cfg.min_zoom)  # (B, K, 1, w, w)
        what_loc, what_std = self.encoder(glimpses.reshape(b * k, 1, cfg.window_size, cfg.window_size))
        what_loc, what_std = what_loc.view(b, k, -1), what_std.view(b, k, -1)
        z_what = what_loc if deterministic else what_loc + what_std * torch.randn_like(what_loc)
        if z_pres is not None:
            z_pres = z_pres.to(logit)
        else:
            z_pres = (logit > 0).to(x) if deterministic else torch.bernoulli(torch.sigmoid(logit)).detach()
        return GuideOutput(z_pres=z_pres, z_pres_logit=logit, z_where=z_where, z_where_loc=su_loc,
                           z_where_std=su_std, z_what=z_what, z_what_loc=what_loc, z_what_std=what_std,
                           z_where_raw=su)

    # ------------------------------------------------------------------------------------------------------
    # 3. Objective: the ELBO, each cell's z_pres summed out given the others' sample
    # ------------------------------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, train_step: int = 0, use_baseline: bool = True,
             z_pres_prior: torch.Tensor | None = None, z_pres: torch.Tensor | None = None) -> LossOutput:
        """The ELBO of images x (B, 1, H, W) for one sample of q, and the surrogate whose gradient is the local
        expectation gradient (module docstring). ``z_pres_prior``: :meth:`prior`, if already computed; ``z_pres``
        (B, K): evaluate at these presence values instead of a sample (the tests sum over all of them)."""
        q = self.guide(x, z_pres=z_pres)
        rho = (self.prior(train_step) if z_pres_prior is None else z_pres_prior).reshape(-1)[0].float()
        patches = self.draw_patches(q.z_what, q.z_where)  # (B, K, P * P)
        z = q.z_pres  # (B, K), sampled
        kl_where = kl_normal(q.z_where_loc, q.z_where_std, self.where_prior_loc, self.where_prior_std).sum(-1)
        kl_what = kl_normal(q.z_what_loc, q.z_what_std, 0.0, 1.0).sum(-1)
        object_cost = kl_where + kl_what  # (B, K): the KL of a cell's continuous latents when it is present
        kl_pres = kl_bernoulli(q.z_pres_logit, rho)  # (B, K)

        canvas = self.canvas_of(patches * z[..., None])  # (B, S), the padded canvas
        log_lik = self.log_likelihood(x, self.patch.crop(canvas))
        elbo = log_lik - (z * object_cost).sum(1) - kl_pres.sum(1)  # the ELBO estimate for this sample

        # Each cell with and without its object, the other cells as sampled (held fixed here, so that each cell's
        # term carries the gradient of its own latents only): gain_k = log p(x | others + object k) - log p(x |
        # others) - KL of its continuous latents
        q_pres = torch.sigmoid(q.z_pres_logit)
        gain = self._likelihood_gains(x, canvas.detach(), patches, z) - object_cost  # (B, K), with gradient
        # d/dq_k: the gain (held fixed); d/d(cell k's latents and the decoder): q_k d(gain_k)
        surrogate = (q_pres * gain.detach() + q_pres.detach() * gain).sum(1) - kl_pres.sum(1)
        steps = self.config.grid_alone_steps
        if steps and train_step < steps and self.training:  # not the ELBO: an early push (config.grid_alone_steps)
            alone = self._likelihood_gains(x, torch.zeros_like(canvas), patches, torch.zeros_like(z))
            surrogate = surrogate + (1 - train_step / steps) * (q_pres.detach() * (alone - object_cost)).sum(1)

        terms = {"log_lik": log_lik.mean(), "kl_where": (z * kl_where).sum(1).mean(),
                 "kl_what": (z * kl_what).sum(1).mean(), "kl_pres": kl_pres.sum(1).mean()}
        return LossOutput(loss=-surrogate.mean(), baseline_loss=torch.zeros((), device=x.device),
                          elbo=elbo.detach(), counts=z.sum(1).detach().long(),
                          terms={k: v.detach() for k, v in terms.items()}, per_image_loss=-surrogate)

    def log_weights(self, x: torch.Tensor, train_step: int = 0) -> torch.Tensor:
        """One importance weight per image, ``log p(x, z) - log q(z | x)`` with z ~ q (B,): full log densities of
        the sample (every cell's z_pres; (s, u) and z_what of the present cells, whose densities are the only
        ones the model uses). Its mean is an unbiased estimate of the ELBO; ``evaluate.importance_log_px``
        averages K of them into the importance-weighted bound."""
        q = self.guide(x)
        canvas, _ = self.render(q.z_what, q.z_where, q.z_pres)
        rho_logit = torch.logit(self.prior(train_step).to(x))
        log_p_pres = bernoulli_log_prob(q.z_pres, rho_logit.expand_as(q.z_pres)).sum(1)
        log_q_pres = bernoulli_log_prob(q.z_pres, q.z_pres_logit).sum(1)
        log_p_obj = normal_log_prob(q.z_where_raw, self.where_prior_loc, self.where_prior_std) + \
            normal_log_prob(q.z_what, 0.0, 1.0)
        log_q_obj = normal_log_prob(q.z_where_raw, q.z_where_loc, q.z_where_std) + \
            normal_log_prob(q.z_what, q.z_what_loc, q.z_what_std)
        log_p = self.log_likelihood(x, canvas) + log_p_pres + (q.z_pres * log_p_obj).sum(1)
        return log_p - log_q_pres - (q.z_pres * log_q_obj).sum(1)

    def _likelihood_gains(self, x: torch.Tensor, canvas: torch.Tensor, patches: torch.Tensor,
                          z: torch.Tensor) -> torch.Tensor:
        """(B, K): log p(x | the other present objects and object k) - log p(x | the other present objects), for
        every cell k, over its patch (outside it object k draws nothing, so both likelihoods agree there);
        ``canvas`` (the sampled one, padded, (B, S)) is held fixed, the gradient flows into object k alone.

        Gaussian likelihood and summed objects (the default), in closed form: with r_k = x - (the others' canvas)
        = x - canvas + z_k o_k, the gain is sum_pixels (2 r_k o_k - o_k^2) / (2 sigma^2), a few operations per
        pixel instead of two likelihoods. Otherwise both likelihoods are computed."""
        cfg, index = self.config, self.patch_index
        present = patches.detach() * z[..., None]  # (B, K, P * P)
        if cfg.likelihood == "gaussian" and cfg.composition == "sum":
            r = (self.patch.pad(x) - canvas)[:, index] + present
            return ((2 * r - patches) * patches).sum(-1) / (2 * cfg.likelihood_sigma ** 2)
        mine = canvas[:, index]  # the canvas at each cell's patch
        if cfg.composition == "sum":
            others = mine - present
        else:  # the maximum over the others: the canvas unless cell k alone holds it there, then the second largest
            top = (present >= mine) & (present > 0)
            flat = index.flatten().expand(present.size(0), -1)
            holders = torch.zeros_like(canvas).scatter_add(1, flat, top.to(present).flatten(1))[:, index]
            second = self.canvas_of(present * ~top)[:, index]
            others = torch.where(top & (holders == 1), second, mine)
        shape = (*patches.shape[:2], 1, self.patch.size, self.patch.size)
        xk = self.patch.pad(x)[:, index].view(shape)
        with_k = self.overlay(others, patches)
        return self.log_likelihood(xk, with_k.view(shape)) - self.log_likelihood(xk, others.view(shape))

    # ------------------------------------------------------------------------------------------------------
    # Inference API (as AIR's)
    # ------------------------------------------------------------------------------------------------------
    def infer(self, images, batch_size: int = 500, deterministic: bool = True,
              refine_steps: int = 0, refine_samples: int = 128) -> InferenceResult:
        """Find the objects in images, as :meth:`AIR.infer` does (present cells in row-major order);
        ``refine_samples`` is only read with ``refine_steps``, which the grid model refuses."""
        if refine_steps:
            from ..errors import InputError

            raise InputError("refine_steps refines AIR's count; the grid model's cells are not refined (use 0)")
        return AIR.infer(self, images, batch_size, deterministic)

    def inferred(self, x: torch.Tensor, deterministic: bool = True) -> tuple:
        """One batch of :meth:`infer`, as :meth:`AIR.inferred`, every object's drawn box read from its patch:
        no object is put on a canvas of its own (K canvases per image would cost more than the guide)."""
        q = self.guide(x, deterministic=deterministic)
        b, k, w, p = x.size(0), self.cells, self.config.window_size, self.patch.size
        windows = self.decoder(q.z_what.reshape(b * k, -1)).view(b, k, 1, w, w)
        patches = self.draw_patches(q.z_what, q.z_where, windows)
        canvas = self.patch.crop(self.canvas_of(patches * q.z_pres[..., None]))
        return q, canvas, windows, ink_boxes(patches.view(b, k, p, p), q.z_where, self.config, self.patch_origin)

    def for_canvas(self, image_size: int) -> "GridAIR":
        """This model on a canvas of another size, for inference: cells and windows of the same size in pixels
        (``grid_size`` scaled with the canvas, and with it the zoom prior and every proposed zoom), the same
        weights (copied), so that a model trained on 84 x 84 scenes reads 128 x 128 ones as it reads its own."""
        cfg = self.config
        ratio = image_size / cfg.image_size
        wider = dataclasses.replace(cfg, image_size=image_size, grid_size=max(1, round(cfg.grid_size * ratio)),
                                    max_steps=3, scale_prior_mean=cfg.scale_prior_mean * ratio,
                                    scale_prior_std=cfg.scale_prior_std * ratio)
        model = GridAIR(wider).to(self.cell_centres.device)
        model.load_state_dict(self.state_dict())
        model.zoom_scale[0] = ratio * float(self.zoom_scale[0])
        return model.train(self.training)

    def slot_presence(self, pres_probs: torch.Tensor) -> torch.Tensor:
        """q that each cell holds an object (B, K): its presence probability (the cells are independent)."""
        return pres_probs

    @torch.no_grad()
    def count_probs(self, images, batch_size: int = 500) -> torch.Tensor:
        """q(n | x), n = 0..K, (B, K + 1): the distribution of a sum of independent Bernoullis (Poisson-binomial),
        by the recursion over cells, for one sample of the continuous latents."""
        from .inputs import as_image_batch

        x_all = as_image_batch(images, self.config.image_size)
        out = []
        with eval_mode(self):
            for i in range(0, x_all.size(0), batch_size):
                x = x_all[i:i + batch_size].to(self.cell_centres.device)
                out.append(poisson_binomial(torch.sigmoid(self.guide(x).z_pres_logit.double())).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.cells + 1)

    loader = None  # installed by attend_infer_repeat/__init__.py, as AIR's

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu"):
        """Load a model from any checkpoint ``air train`` wrote (whichever model it holds)."""
        return cls.loader(path, device=device)


def poisson_binomial(p: torch.Tensor) -> torch.Tensor:
    """P(sum of independent Bern(p_k) = n), n = 0..K, for probabilities p (..., K): (..., K + 1)."""
    dist = torch.zeros(*p.shape[:-1], p.size(-1) + 1, dtype=p.dtype, device=p.device)
    dist[..., 0] = 1.0
    for k in range(p.size(-1)):
        pk = p[..., k:k + 1]
        dist = torch.cat([dist[..., :1] * (1 - pk), dist[..., 1:] * (1 - pk) + dist[..., :-1] * pk], -1)
    return dist
