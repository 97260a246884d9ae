"""The neural networks AIR is built from: small MLPs, an LSTM step whose image projection can be computed
once per image, the what-encoder/decoder, and the NVIL baseline network."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Sequential):
    """Linear layers with ReLU between them (none after the last)."""

    def __init__(self, sizes: list[int]):
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)

    @property
    def last(self) -> nn.Linear:
        return self[-1]


class ImageLSTM(nn.Module):
    """An LSTM cell whose input is ``[image, latents]``, with the two input projections kept apart.

    Mathematically the same as ``nn.LSTMCell`` on the concatenated input (the gate pre-activations are
    ``W_img image + W_lat latents + W_h h + b``). Keeping ``W_img image`` separate lets AIR, whose image is
    the same at every step, compute the largest matrix product once per image instead of once per step."""

    def __init__(self, image_dim: int, latent_dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.image_proj = nn.Linear(image_dim, 4 * hidden)
        self.latent_proj = nn.Linear(latent_dim + hidden, 4 * hidden, bias=False)
        bound = 1.0 / hidden ** 0.5  # nn.LSTMCell's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project_image(self, image_flat: torch.Tensor) -> torch.Tensor:
        return self.image_proj(image_flat)

    def forward(self, image_proj: torch.Tensor, latents: torch.Tensor,
                state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        # the cell state is kept in fp32 even when the products run in bf16 autocast
        gates = (image_proj + self.latent_proj(torch.cat([latents, h], -1))).float()
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = like.new_zeros(batch, self.hidden)
        return z, z


class WherePresPredictor(nn.Module):
    """LSTM state -> z_pres logit and the Gaussian z_where posterior (loc as an offset from the prior mean,
    std through softplus). The last layer starts at zero weights and chosen biases, so every image starts
    with the same well-behaved proposal: an object is likely, windows sit at the prior mean, std is small."""

    def __init__(self, hidden: int, predict_hidden: int, z_pres_init_logit: float, z_where_init_std: float):
        super().__init__()
        self.net = MLP([hidden, predict_hidden, 1 + 3 + 3])
        with torch.no_grad():
            self.net.last.weight.zero_()
            self.net.last.bias.zero_()
            self.net.last.bias[0] = z_pres_init_logit
            self.net.last.bias[4:] = _softplus_inverse(z_where_init_std)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(h).float()
        return out[:, 0], out[:, 1:4], F.softplus(out[:, 4:7]) + 1e-4


class WhatEncoder(nn.Module):
    """Glimpse (B, 1, w, w) -> Gaussian z_what posterior (loc, std)."""

    def __init__(self, window_size: int, hidden: int, z_what_dim: int):
        super().__init__()
        self.net = MLP([window_size * window_size, hidden, 2 * z_what_dim])

    def forward(self, glimpse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_std = self.net(glimpse.flatten(1)).float().chunk(2, -1)
        return loc, F.softplus(raw_std) + 1e-4


class WhatDecoder(nn.Module):
    """z_what (B, D) -> the object's appearance in its window, (B, 1, w, w) in (0, 1).

    The sigmoid's input is shifted by ``output_bias`` (-2 by default) so that new objects start nearly empty
    rather than as bright blobs that make the model explain everything with zero objects."""

    def __init__(self, z_what_dim: int, hidden: int, window_size: int, output_bias: float):
        super().__init__()
        self.window_size = window_size
        self.output_bias = output_bias
        self.net = MLP([z_what_dim, hidden, window_size * window_size])

    def forward(self, z_what: torch.Tensor) -> torch.Tensor:
        logits = self.net(z_what).float() + self.output_bias
        return torch.sigmoid(logits).view(-1, 1, self.window_size, self.window_size)


class Baseline(nn.Module):
    """NVIL's data-dependent baseline (Mnih & Gregor, 2014): its own LSTM over the image and the guide's
    (detached) previous latents, and an MLP to one value per step. Trained by regression to the learning
    signal; it only reduces the variance of the z_pres gradient, it never changes its expectation. Only the
    score-function estimator (``z_pres_estimator="nvil"``) has one."""

    def __init__(self, image_dim: int, latent_dim: int, hidden: int, predict_hidden: int):
        super().__init__()
        self.lstm = ImageLSTM(image_dim, latent_dim, hidden)
        self.head = MLP([hidden, predict_hidden, 1])


def _softplus_inverse(y: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(y))))
