"""Typed configuration. Every field has a paper- or reference-faithful default and is saved in each checkpoint.

Conventions used throughout the package:

* ``z_where = (s, x, y)``: ``s`` is the *zoom* from image to window (a window of ``image_size / s`` pixels),
  ``(x, y)`` is the window centre in normalised image coordinates (-1 = left/top edge, +1 = right/bottom).
  The glimpse is cropped with ``image = x_win / s + (x, y)`` and drawn back with the inverse.
* ``z_pres`` is a run of ones followed by zeros: once a step says "no object", every later step does too.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .data.registry import dataset as registered
from .errors import InputError
from .model.config import (  # noqa: F401 - ModelConfig and its constants are part of this module's API
    COMPOSITIONS,
    LIKELIHOODS,
    MAX_PARAMETERS,
    MODEL_LIMITS,
    Z_PRES_ESTIMATORS,
    Z_PRES_PRIORS,
    ModelConfig,
    _check,
    _check_types,
    approximate_parameters,
    option,
)

COMPILE_CHOICES = ("auto", "on", "off")
#: Upper bounds of the training config's sizes (a typo such as an extra digit gets a clear error, not hours).
TRAIN_LIMITS = {"steps": 10**9, "batch_size": 65_536, "n_train": 10**8, "n_test": 10**8, "eval_size": 10**8,
                "restarts": 100, "threads": 4096}


def compile_default() -> str:
    """The default of ``TrainConfig.compile``: the environment variable AIR_COMPILE (any case), else auto. A bad
    value is reported where a training config is built, not where the package is imported."""
    return os.environ.get("AIR_COMPILE", "auto").strip().lower() or "auto"


def object_sizes(dataset: str, size: int | None, max_size: int | None) -> tuple[int, int | None]:
    """The object size (or size range) of ``dataset``'s scenes: the data set's default range when no size is
    given; a size given alone means that one size (unless a maximum is given too)."""
    if size is None:
        size = registered(dataset).digit_size
        if max_size is None:
            max_size = registered(dataset).max_digit_size
    return size, max_size


@dataclass
class TrainConfig:
    """How ``air train`` trains: budget, optimiser, evaluation and checkpoints."""

    steps: int = option(6_000,
            "training budget in optimiser steps (default: 6000)")
    minutes: float | None = option(None,
            "training budget in wall-clock minutes (the run ends at whichever budget comes first; default: none)")
    batch_size: int = option(64,
            "images per step")
    # Adam, model and guide (Pyro: 1e-4; 1e-3 with cosine decay learns the task in minutes here)
    lr: float = option(1e-3,
            "Adam learning rate of model and guide")
    # Adam, the NVIL baseline network (needs a much larger rate)
    baseline_lr: float = option(1e-1,
            "Adam learning rate of the NVIL baseline")
    lr_schedule: str = "cosine"  # "constant" or "cosine" (decays to lr * lr_final_fraction over the budget)
    lr_final_fraction: float = 0.1
    grad_clip: float | None = option(None,
            "clip model+guide gradient norm (off if unset)")
    seed: int = option(0,
            "random seed of initialisation and training")
    # auto: bf16 autocast of the matrix products where the hardware does bf16 natively (CPUs with AVX-512 BF16
    # or AMX, GPUs that support it; the same accuracy, faster: benchmarks/results/throughput.json), else fp32.
    # fp16 (for GPUs without bf16) adds dynamic loss scaling.
    precision: str = option("auto",
            "autocast for the matrix products: auto picks bf16 where the CPU/GPU has it natively; fp16 (with loss "
            "scaling) is for GPUs without bf16",
            choices=('auto', 'fp32', 'bf16', 'fp16'))
    # torch.compile (TorchInductor) of the training loss: faster CPU steps after a one-time compile, cached per
    # machine (benchmarks/results/throughput.json), and as reliable as eager (benchmarks/results/accuracy*.json).
    # auto: on CPUs, in one process, where a C++ compiler is found, falling back to eager with a warning where
    # compiling fails; on: on any device, and stop with an error where it fails; off: eager. The environment
    # variable AIR_COMPILE (auto, on or off) sets the default for a machine. Configs saved before this option
    # existed mean off.
    compile: str = option(None, factory=compile_default, help=
            "torch.compile the training loss: faster CPU steps after a one-time compile (cached per machine). auto "
            "(default, or $AIR_COMPILE): on CPUs with a C++ compiler, falling back to eager with a warning where "
            "compiling fails; on: any device, an error where it fails; off: eager",
            choices=('auto', 'on', 'off'))
    device: str = option("auto",
            "auto, cpu, cuda or mps (auto picks a GPU when present)")
    threads: int | None = option(None,
            "torch CPU threads (default: torch's choice)")
    eval_every: int = option(1000,
            "held-out evaluation every N steps")
    # how often a run may start again from new initial weights when the trap check (diagnose.py: no labels) finds
    # a known bad optimum early on, one that stays (diagnose.early_look_steps, diagnose.staying_traps)
    restarts: int = option(2,
            "start again from new initial weights, at most this many times, when the trap check (no labels needed) "
            "finds a known bad optimum early in training (0: never)")
    eval_size: int = option(2000,
            "held-out scenes scored at each periodic evaluation (the final one scores all)")
    checkpoint_every: int = option(1000,
            "write last.pt every N steps")
    log_every: int = option(50,
            "log training metrics every N steps")
    n_train: int = option(60_000,
            "training scenes (from the train items; ignored with --data)")
    n_test: int = option(10_000,
            "held-out scenes (from the test items; ignored with --data)")
    # object size in px; None: the data set's default (data/registry.py)
    digit_size: int | None = option(None,
            "object size in pixels (default: 28 for mnist as in the paper, 20 for fashion, 10 for sprites)")
    max_digit_size: int | None = option(None,
            "if set, object sizes vary uniformly between --digit-size and this (default: 20 for sprites when --digit-"
            "size is not given either, else none)")
    # None: the data set's (data/registry.py)
    counts: tuple[int, ...] | None = option(None,
            "allowed object counts per scene, each equally likely, e.g. 0,1,2 (default: the data set's: 0,1,2; "
            "0-15 for mnist-many, 0-20 for mnist-many-20)")
    max_overlap: float = option(0.0,
            "generated scenes: the largest IoU two objects' ink boxes may have (default 0: apart)")
    allow_overlap: bool = option(False,
            "generated scenes: let the objects overlap (pixels combined with max); by default their ink boxes are "
            "disjoint")
    data_seed: int = option(0,
            "seed of the generated scenes")
    data_dir: str | None = option(None,
            "a folder with the MNIST (or, with --dataset fashion, Fashion-MNIST) IDX files (optional)")
    # mnist | fashion | sprites: the generated scenes; files: the images at data_path
    dataset: str = option("mnist",
            "generated scenes of MNIST digits, Fashion-MNIST items or procedural sprites (default: mnist; fashion and "
            "sprites bring their own --digit-size and --scale-prior-mean defaults)")
    data_path: str | None = option(None,
            "train on your own images instead: a folder of PNG/JPEG files, a .npy/.npz array (N,H,W) or (N,1,H,W), "
            "uint8 or floats in [0,1], or a scene .npz from 'air data' (its counts give a held-out count accuracy; "
            "other images are evaluated by ELBO only). Read as 'air infer' reads images (grey, inverted if dark on "
            "light, padded and resized to 50x50)",
            metavar='PATH', flag='--data')
    holdout: float = option(0.1,
            "with --data: the fraction of the images held out for evaluation")
    init_from: str | None = option(None,
            "start from the weights of a trained model (a .pt file or a run directory) instead of new ones, e.g. to go "
            "on training on other scenes; without --config its model configuration is taken too, with the model options"
            " typed beside it (priors, composition, ...) in its place. No restarts: there are no new weights to restart"
            " from",
            metavar='CHECKPOINT')

    def __post_init__(self) -> None:
        _check_types(self)
        for name, most in TRAIN_LIMITS.items():
            value = getattr(self, name)
            _check(value is None or value <= most, f"{name} must be at most {most}, got {value}")
        registered(self.dataset)  # a known data set, or a clear error
        _check((self.dataset == "files") == (self.data_path is not None),
               "data_path (--data) is needed for, and only for, dataset 'files'")
        _check(0 < self.holdout < 1, f"holdout must lie strictly between 0 and 1, got {self.holdout!r}")
        # resolved here, so a saved config always holds the sizes it used
        self.digit_size, self.max_digit_size = object_sizes(self.dataset, self.digit_size, self.max_digit_size)
        self.counts = tuple(int(c) for c in (registered(self.dataset).counts if self.counts is None else self.counts))
        _check(self.steps >= 1, "steps must be at least 1")
        _check(self.minutes is None or self.minutes > 0, "minutes must be positive")
        _check(self.batch_size >= 1, "batch_size must be at least 1")
        _check(self.lr > 0 and self.baseline_lr > 0, "learning rates must be positive")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"),
               f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        _check(self.compile in COMPILE_CHOICES, "compile (--compile, or the environment variable AIR_COMPILE) "
               f"must be auto, on or off, got {self.compile!r}")
        _check(self.lr_schedule in ("constant", "cosine"), f"lr_schedule must be constant or cosine, got "
               f"{self.lr_schedule!r}")
        _check(0 <= self.lr_final_fraction <= 1, "lr_final_fraction must be between 0 and 1")
        _check(self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
               f"device must be auto, cpu, cuda or mps, got {self.device!r}")
        _check(self.restarts >= 0, "restarts must be >= 0")
        _check(self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}")
        _check(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive (a norm to clip to), "
               f"got {self.grad_clip}")
        _check(self.eval_every >= 1 and self.checkpoint_every >= 1 and self.log_every >= 1,
               "eval_every, checkpoint_every and log_every must be at least 1")
        _check(self.n_train >= 1 and self.n_test >= 1, "n_train and n_test must be at least 1")


#: the ModelConfig fields a data set gives a default of its own: model field -> the data set's (data/registry.py)
MODEL_DEFAULTS_OF_DATA = {"image_size": "canvas_size", "scale_prior_mean": "scale_prior_mean", "grid_size": "grid_size"}
_MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


@dataclass
class RunConfig:
    """Everything that defines a run; saved as JSON in the run directory and inside every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        data = registered(self.train.dataset)
        if self.model.dair is None:  # the data set's default, so a saved configuration always says which model
            # (DAIR is AIR's: the grid model has no steps to difference)
            self.model = dataclasses.replace(self.model, dair=data.dair and self.model.architecture == "air")
        # the image size and zoom prior of a data set with other scenes (mnist-many: 84x84, small digits), where the
        # model leaves them at their defaults; no data set before those had other values here, so no saved
        # configuration changes
        for name, data_name in MODEL_DEFAULTS_OF_DATA.items():
            if name == "grid_size" and self.model.architecture != "grid":
                continue  # AIR has no cells: its configuration stays as given
            if getattr(self.model, name) == _MODEL_DEFAULTS[name] != getattr(data, data_name):
                change = {name: getattr(data, data_name)}
                if name == "grid_size":  # one slot per cell
                    change["max_steps"] = change["grid_size"] ** 2
                self.model = dataclasses.replace(self.model, **change)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict) or not all(isinstance(d.get(k, {}), dict) for k in ("model", "train")):
            raise InputError(f"a run configuration is a mapping with 'model' and 'train' mappings, got "
                             f"{type(d).__name__}")
        model, train = dict(d.get("model", {})), dict(d.get("train", {}))
        train.setdefault("compile", "off")  # saved before the option existed: those runs trained eagerly
        train.setdefault("restarts", 0)  # ... and those could not start again
        model.setdefault("z_pres_estimator", "nvil")  # saved before the option existed: NVIL was the only one
        # options that were measured and removed (benchmarks/results/accuracy_baseline_*.json): only the
        # NVIL baseline, which inference never uses, depended on them
        model.pop("baseline_image", None)
        train.pop("baseline_weights", None)
        return cls(model=config_from_dict(ModelConfig, model),
                   train=config_from_dict(TrainConfig, train))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "RunConfig":
        """The configuration a run saved: its ``config.json``, or the run directory that holds one. Any problem
        with the file is an InputError that names it."""
        p = Path(path)
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise InputError(f"{p} is a folder without config.json; give a run directory that 'air train' "
                                 "wrote, or a config.json file")
            p = p / "config.json"
        what = "give the config.json that 'air train' writes in every run directory (or the directory itself)"
        try:
            d = json.loads(p.read_bytes())
        except FileNotFoundError:
            raise InputError(f"{p} does not exist; {what}") from None
        except OSError as e:
            raise InputError(f"cannot read {p}: {e.strerror or e}") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{p} is not JSON ({e.msg} at line {e.lineno}, column {e.colno}); {what}") from None
        except UnicodeDecodeError:
            raise InputError(f"{p} is not JSON (not UTF-8 text); {what}") from None
        if not isinstance(d, dict) or not {"model", "train"} <= set(d):
            found = f"keys {sorted(d)}" if isinstance(d, dict) else _JSON_KINDS.get(type(d), type(d).__name__)
            raise InputError(f"{p} is not a run configuration (one has 'model' and 'train' sections; this has "
                             f"{found}); {what}")
        unknown = sorted(set(d) - {"model", "train"})
        if unknown:
            raise InputError(f"{p}: unknown RunConfig field(s) {unknown}; a run configuration has 'model' and "
                             "'train' only")
        try:
            return cls.from_dict(d)
        except InputError as e:
            raise InputError(f"{p}: {e}") from None


_JSON_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


def config_from_dict(cls, d: dict[str, Any]):
    """Build a dataclass from a dict, refusing unknown keys with a clear message."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**d)
