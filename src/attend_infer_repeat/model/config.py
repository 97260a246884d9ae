"""The model's typed configuration: sizes, priors, likelihood and estimator, with the paper's defaults.

Conventions used throughout the package:

* ``z_where = (s, x, y)``: ``s`` is the *zoom* from image to window (a window of ``image_size / s`` pixels),
  ``(x, y)`` is the window centre in normalised image coordinates (-1 = left/top edge, +1 = right/bottom).
  The glimpse is cropped with ``image = x_win / s + (x, y)`` and drawn back with the inverse.
* ``z_pres`` is a run of ones followed by zeros: once a step says "no object", every later step does too.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields

from ..errors import InputError

LIKELIHOODS = ("gaussian", "bernoulli")
COMPOSITIONS = ("sum", "max")
Z_PRES_PRIORS = ("bernoulli", "geometric")
Z_PRES_ESTIMATORS = ("enumerate", "nvil")
ARCHITECTURES = ("air", "grid")
#: Upper bounds of the model's sizes, checked wherever a config is built (also from a checkpoint's saved
#: config): far beyond any AIR in the literature, and small enough that building the model cannot allocate until
#: memory runs out.
MODEL_LIMITS = {"image_size": 1024, "max_steps": 256, "window_size": 256, "z_what_dim": 4096, "lstm_hidden": 8192,
                "encoder_hidden": 8192, "decoder_hidden": 8192, "predict_hidden": 8192}
#: The most parameters a config may ask for (the default model has about 3 million).
MAX_PARAMETERS = 200_000_000

def option(default=MISSING, help: str = "", *, factory=None, **cli):
    """A configuration field that ``air train`` offers on its command line: the help text (and any of argparse's
    ``choices`` and ``metavar``, or ``flag`` for an option named otherwise) live in the field's metadata, so the
    option is declared once, here, and ``cli.py`` builds its argparse group from it."""
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """The AIR model: sizes, priors and likelihood (defaults: the paper's multi-MNIST model, with the
    sizes and priors of the Pyro example that public re-implementations confirmed)."""

    image_size: int = 50  # H = W of the input images
    # "air": the paper's recurrent model (air.py); "grid" (ours, the SPAIR/SPACE family): a CNN gives each cell of a
    # grid_size x grid_size grid an object slot, all inferred at once (grid.py)
    architecture: str = option("air",
            "the model: AIR's recurrent inference (the paper's, with --dair its Difference AIR), or a grid of cells "
            "inferred in parallel by a CNN, as in SPAIR and SPACE (its cost does not grow with the objects)",
            choices=('air', 'grid'), flag='--model', dest='architecture')
    # grid: cells per side; max_steps is then the number of cells, grid_size ** 2
    grid_size: int = option(6,
            "--model grid: cells per side of the grid (each cell holds at most one object)")
    # grid: the per-cell presence prior starts at z_pres_prior_p and is annealed log-linearly to this over
    # grid_prior_anneal_steps (a prior strong enough to stop two cells sharing a digit from the start leaves
    # every cell empty before the decoder can draw a digit; benchmarks/results/grid_probes.json)
    grid_prior_final: float = option(1e-6,
            "--model grid: the per-cell presence prior after annealing from --z-pres-prior-p")
    grid_prior_anneal_steps: int = option(1000,
            "--model grid: steps over which the presence prior is annealed")
    # grid: each object is drawn on a patch of the canvas around its cell, wide enough for a window this many times
    # the zoom prior's (a larger window is cut at the patch's edge); the patches, not K whole canvases, make the
    # likelihood of each cell's object cheap
    # grid: each object is drawn with the centre of its ink on its window's centre (and so inside its own cell):
    # a cell can explain only a digit whose ink is centred in it, not a neighbour's digit, nor a copy or a share of it
    grid_centre_ink: bool = option(False,
            "--model grid: draw each object with the centre of its ink on its window's centre (inside its cell)")
    # grid: for the first grid_alone_steps steps (weight falling linearly from 1 to 0), each object's continuous
    # latents are also trained to explain its patch on their own, as if no other object were there: a digit that two
    # cells split (each drawing a part, a stable point of the ELBO) is then drawn whole by both, and the ELBO keeps one
    grid_alone_steps: int = option(0,
            "--model grid: steps over which each object is also trained to explain its patch alone (0: never)")
    grid_reach: float = option(2.0,
            "--model grid: the widest window drawn whole, in multiples of the zoom prior's window")
    # N: the most objects one image can be explained with
    max_steps: int = option(3,
            "N, the most objects per image")
    # the glimpse (attention window) is window_size x window_size pixels
    window_size: int = option(28,
            "attention window (glimpse) size")
    z_what_dim: int = option(50,
            "size of the appearance code z_what")
    lstm_hidden: int = option(256,
            "LSTM state size")
    encoder_hidden: int = 200  # what-encoder MLP
    decoder_hidden: int = 200  # what-decoder MLP
    predict_hidden: int = 200  # MLP from the LSTM state to the z_pres and z_where parameters
    # Difference AIR: each step sees the image minus the canvas drawn so far. None: the data set's default, which
    # a RunConfig fills in (data/registry.py: DAIR for sprites); plain AIR for a model built on its own
    dair: bool | None = option(None,
            "Difference AIR: each step sees image minus canvas so far (default: on for --dataset sprites, where plain "
            "AIR stacks its steps on one shape; off otherwise)")
    # DAIR only. True (the paper's): the LSTM carries its state and the previous step's latents from step to step.
    # False (ours): every step starts from the LSTM's initial state with no previous latents, so the whole step
    # (z_pres, z_where, z_what) is one function of the residual image, the same at every step: a model that has
    # learned to find one object and to stop on an empty residual counts any number of them
    dair_memory: bool = option(True,
            "with --dair: carry the LSTM state and the previous latents from step to step (the paper's); --no-dair-"
            "memory makes every step one function of the residual image alone (ours)")
    # How training treats the discrete z_pres: "enumerate" sums the ELBO over the N + 1 possible counts exactly
    # (AIR.enumerated_objective: an exact gradient for the presence probabilities, no baseline); "nvil" samples
    # z_pres and uses the score function with the NVIL baseline, as the paper does
    z_pres_estimator: str = option("enumerate",
            "training's treatment of the discrete z_pres: sum the ELBO over every count exactly, or sample it with the "
            "score-function (NVIL) estimator of the paper",
            choices=('enumerate', 'nvil'))
    # Likelihood p(x | z)
    likelihood: str = option("gaussian",
            "p(x | z): Gaussian with fixed sigma, or Bernoulli",
            choices=('gaussian', 'bernoulli'))
    likelihood_sigma: float = option(0.3,
            "sigma of the Gaussian likelihood")
    # How the objects make the canvas. "sum" (the paper's): the canvas is the sum of the objects, so where two
    # objects' ink crosses it is counted twice. "max" (ours): each pixel is the brightest object's, which is how
    # ink on paper (and our generated scenes) overlaps; two crossing digits then cost no more than two apart
    composition: str = option("sum",
            "how objects make the canvas: their sum (the paper's) or the pixel-wise maximum (ink that overlaps, as in "
            "the generated scenes: two crossing digits cost no more than two apart)",
            choices=('sum', 'max'))
    # Priors of the generative model
    # "bernoulli": fixed p per step; "geometric": truncated geometric on the count
    z_pres_prior: str = option("bernoulli",
            "prior on the count: fixed Bernoulli per step, or truncated geometric with annealing",
            choices=('bernoulli', 'geometric'))
    # the Bernoulli prior's p (Pyro tutorial), or the geometric prior's final value
    z_pres_prior_p: float = option(0.01,
            "Bernoulli prior p per step (or the geometric prior's final success probability)")
    # geometric prior: success probability at step 0 ...
    z_pres_anneal_start: float = option(0.99,
            "geometric prior: success probability at the start of training")
    # ... annealed (log-linearly) to z_pres_prior_p over this many steps
    z_pres_anneal_steps: int = option(100_000,
            "geometric prior: steps over which it is annealed to --z-pres-prior-p")
    # zoom s ~ N(mean, std); 50/3 = 17 px windows
    scale_prior_mean: float = option(3.0,
            "prior mean of the zoom s (window = image size / s pixels; default: 3 as in the paper, a 17 px window, "
            "which also suits the 20 px Fashion-MNIST items)")
    scale_prior_std: float = option(0.2,
            "prior std of the zoom s")
    shift_prior_mean: float = 0.0  # window centre (x, y) ~ N(mean, std) in normalised coordinates
    shift_prior_std: float = option(1.0,
            "prior std of the window centre (normalised coordinates)")
    # Initialisation that keeps training out of the known bad optima
    decoder_output_bias: float = -2.0  # objects start nearly empty, else counts collapse to 0
    z_pres_init_logit: float = 2.0  # the guide starts by proposing objects (p = 0.88)
    z_where_init_std: float = 0.1  # small initial z_where posterior std
    min_zoom: float = 0.1  # numerical floor for |s| inside the transforms (a 10x-image window): no 1/0

    def __post_init__(self) -> None:
        _check_types(self)
        _check(self.architecture in ARCHITECTURES,
               f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        _check(1 <= self.grid_size <= 16,
               f"grid_size must be between 1 and 16 (at most 256 cells), got {self.grid_size}")
        if self.architecture == "grid":  # a cell per object slot
            _check(self.max_steps in (3, self.grid_size ** 2), f"the grid model has one object slot per cell, "
                   f"grid_size ** 2 = {self.grid_size ** 2}; set grid_size rather than max_steps ({self.max_steps})")
            self.max_steps = self.grid_size ** 2
            _check(not self.dair, "dair is AIR's (Difference AIR); the grid model infers every cell at once")
            _check(self.z_pres_estimator == "enumerate", "the grid model sums each cell's z_pres out given the "
                   "others (local expectation gradients); z_pres_estimator 'nvil' is AIR's")
            _check(self.z_pres_prior == "bernoulli", "the grid model's prior is a Bernoulli per cell (z_pres_prior "
                   "'bernoulli', annealed to grid_prior_final)")
        _check(0 < self.grid_prior_final < 1, "grid_prior_final must be strictly between 0 and 1")
        _check(self.grid_prior_anneal_steps >= 0, "grid_prior_anneal_steps must be >= 0")
        _check(0 < self.grid_reach <= 16, "grid_reach must be above 0 and at most 16")
        _check(self.grid_alone_steps >= 0, "grid_alone_steps must be >= 0")
        for name, most in MODEL_LIMITS.items():
            _check(getattr(self, name) <= most, f"{name} must be at most {most}, got {getattr(self, name)}")
        _check(self.image_size >= 4, "image_size must be at least 4")
        _check(self.max_steps >= 1, "max_steps must be at least 1")
        _check(self.window_size >= 4, "window_size must be at least 4")
        for name in ("z_what_dim", "lstm_hidden", "encoder_hidden", "decoder_hidden", "predict_hidden"):
            _check(getattr(self, name) >= 1, f"{name} must be a positive integer")
        _check(self.dair or self.dair_memory, "dair_memory False needs dair (Difference AIR): plain AIR's steps "
               "all see the same image, so without memory they would all find the same object")
        _check(self.z_pres_estimator in Z_PRES_ESTIMATORS,
               f"z_pres_estimator must be one of {Z_PRES_ESTIMATORS}, got {self.z_pres_estimator!r}")
        _check(self.composition in COMPOSITIONS,
               f"composition must be one of {COMPOSITIONS}, got {self.composition!r}")
        _check(self.likelihood in LIKELIHOODS, f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        _check(self.likelihood_sigma > 0, "likelihood_sigma must be positive")
        _check(self.z_pres_prior in Z_PRES_PRIORS,
               f"z_pres_prior must be one of {Z_PRES_PRIORS}, got {self.z_pres_prior!r}")
        _check(0 < self.z_pres_prior_p < 1, "z_pres_prior_p must be strictly between 0 and 1")
        _check(0 < self.z_pres_anneal_start < 1, "z_pres_anneal_start must be strictly between 0 and 1")
        _check(self.z_pres_anneal_steps >= 0, "z_pres_anneal_steps must be >= 0")
        _check(self.scale_prior_std > 0 and self.shift_prior_std > 0, "prior standard deviations must be positive")
        _check(self.z_where_init_std > 0, "z_where_init_std must be positive")
        _check(self.min_zoom > 0, "min_zoom must be positive")
        n = approximate_parameters(self)
        _check(n <= MAX_PARAMETERS, f"this model would have about {n / 1e6:.0f} million parameters, more than the "
               f"{MAX_PARAMETERS // 1_000_000} million allowed; use a smaller image_size, window_size or hidden sizes")


def approximate_parameters(m: ModelConfig) -> int:
    """The number of weights ``AIR(m)`` will have, to within a few percent, computed without building it."""
    image, window, latent = m.image_size ** 2, m.window_size ** 2, 3 + m.z_what_dim + 1
    encoder = (window + 1) * m.encoder_hidden + (m.encoder_hidden + 1) * 2 * m.z_what_dim
    decoder = (m.z_what_dim + 1) * m.decoder_hidden + (m.decoder_hidden + 1) * window
    if m.architecture == "grid":  # GridEncoder's CNN (64 channels) and head, then the same what-VAE
        cnn = 32 * 16 + 64 * 32 * 16 + 2 * 64 * 64 * 9 + 64 * m.predict_hidden + m.predict_hidden * 7
        return cnn + encoder + decoder
    lstm = (image + 1) * 4 * m.lstm_hidden + (latent + m.lstm_hidden) * 4 * m.lstm_hidden
    predict = (m.lstm_hidden + 1) * m.predict_hidden + (m.predict_hidden + 1) * 7
    baseline = lstm + (m.lstm_hidden + 1) * m.predict_hidden if m.z_pres_estimator == "nvil" else 0
    return lstm + predict + encoder + decoder + baseline


def _check_types(config) -> None:
    """Refuse a field whose value is not of its annotated type (a float where an int belongs, a string, NaN or
    infinity): configs also come from JSON files and checkpoints, where nothing else checks them."""
    for f in fields(config):
        value = getattr(config, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        if any(_is_kind(value, k) for k in kinds):
            continue
        raise InputError(f"{type(config).__name__}.{f.name} must be {' or '.join(kinds)}"
                         f"{' (finite)' if 'float' in kinds else ''}, got {value!r}")


def _is_kind(value, kind: str) -> bool:
    if kind == "None":  # None itself is accepted before; any other value is not of this kind
        return False
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("tuple[int"):
        return isinstance(value, (tuple, list)) and all(_is_kind(v, "int") for v in value)
    raise TypeError(f"no type check for annotation {kind!r}")  # a new field type: teach _is_kind about it


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)
