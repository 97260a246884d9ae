"""Downstream tasks (the paper's section 3.1): AIR's latents as features for the sum of the digits and for
whether they ascend from left to right, against a convolutional network on the pixels."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, RunConfig, TrainConfig, _check
from ..data import SceneConfig, load_or_make_scenes
from ..errors import InputError
from ..model import AIR
from ..model.inputs import as_float_batch
from ..provenance import record
from .runs import _train_or_reuse, _write_json, _write_text

TASKS = ("sum", "ascending")


def digit_order(boxes: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """Per scene, the digit classes from left to right: sorted by the centre x of each digit's box
    (``boxes`` (B, K, 4), padding rows -1), ties by centre y. Used on the scenes' ink boxes."""
    out = []
    for b, lab in zip(np.asarray(boxes, np.float64), np.asarray(labels)):
        real = [k for k in range(len(lab)) if lab[k] >= 0]
        out.append([int(lab[k]) for k in sorted(real, key=lambda k, b=b: ((b[k, 0] + b[k, 2]) / 2,
                                                                        (b[k, 1] + b[k, 3]) / 2))])
    return out


def sum_labels(labels: np.ndarray) -> np.ndarray:
    """The sum of the digit classes of each scene (padding slots, -1, ignored): 0 for an empty scene."""
    lab = np.asarray(labels)
    return np.where(lab >= 0, lab, 0).sum(axis=1).astype(np.int64)


def ascending_labels(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 where a scene's digits, read from left to right (``digit_order``), are *strictly* increasing, else 0
    (two equal digits are not ascending). Defined for scenes with at least two digits only."""
    rows = digit_order(boxes, labels)
    short = [i for i, r in enumerate(rows) if len(r) < 2]
    if short:
        raise InputError(f"'ascending' needs scenes with at least 2 digits; scene {short[0]} has {len(rows[short[0]])}")
    return np.array([int(all(a < b for a, b in zip(r, r[1:]))) for r in rows], np.int64)


def latent_features(result, max_objects: int) -> np.ndarray:
    """AIR's representation of each scene as one vector: ``max_objects`` slots of (presence, z_where (s, x, y),
    z_what), the inferred objects sorted by their window's centre x (left to right), empty slots all zero.
    ``result`` is an :class:`~attend_infer_repeat.model.InferenceResult`."""
    d = result.z_what[0].shape[1] if len(result.z_what) else 0
    slot = 1 + 3 + d
    feats = np.zeros((len(result.z_what), max_objects * slot), np.float32)
    for i, (what, where) in enumerate(zip(result.z_what, result.z_where)):
        order = torch.argsort(where[:, 1], stable=True)[:max_objects]
        for j, k in enumerate(order.tolist()):
            feats[i, j * slot] = 1.0
            feats[i, j * slot + 1:j * slot + 4] = where[k].numpy()
            feats[i, j * slot + 4:(j + 1) * slot] = what[k].numpy()
    return feats


class PixelCNN(nn.Module):
    """The baseline: a small convolutional network on the raw 50x50 image."""

    def __init__(self, n_classes: int, image_size: int = 50, width: int = 32):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 256), nn.ReLU(), nn.Linear(256, n_classes))

    def forward(self, x):
        return self.head(self.conv(x))


class LatentMLP(nn.Module):
    """The classifier on AIR's latents: a small MLP."""

    def __init__(self, n_in: int, n_classes: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_classes))

    def forward(self, x):
        return self.net(x)


@dataclass
class ClassifierConfig:
    """How both classifiers are trained (the same recipe for both): Adam, a fixed number of steps that grows
    with the label budget (``epochs`` passes over the labels, between ``min_steps`` and ``max_steps``)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    epochs: int = 30
    min_steps: int = 300
    max_steps: int = 600

    def steps(self, n_labels: int) -> int:
        return int(min(self.max_steps, max(self.min_steps, math.ceil(self.epochs * n_labels / self.batch_size))))


def train_classifier(net: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ClassifierConfig, seed: int) -> nn.Module:
    """Fit ``net`` to (x, y) with cross-entropy; seeded batches."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    for _ in range(cfg.steps(len(x))):
        idx = torch.randint(0, len(x), (min(cfg.batch_size, len(x)),), generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    correct = sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / max(len(x), 1)


@dataclass
class DownstreamConfig:
    """``air experiment downstream``: label budgets, classifier seeds, and the AIR model (a finished run given
    by ``model_run``, or one trained here with ``steps`` steps of the default ``air train``)."""

    model_run: str | None = None
    steps: int = 6000
    seed: int = 0  # the AIR run's seed; classifier seeds are seed, seed + 1, ...
    threads: int | None = None
    budgets: tuple[int, ...] = (100, 1000, 10_000)
    seeds: int = 2  # classifier seeds per budget (each draws its own labelled subset)
    tasks: tuple[str, ...] = TASKS
    n_test: int = 2000  # held-out scenes per task (MNIST test digits)
    n_train: int = 60_000  # AIR's (unlabelled) training scenes when it is trained here
    digit_size: int = 28  # digits of the task scenes (and of AIR's training scenes when it is trained here)
    data_seed: int = 0
    data_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)  # when AIR is trained here
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cnn_width: int = 16

    def __post_init__(self) -> None:
        self.budgets, self.tasks = tuple(int(b) for b in self.budgets), tuple(self.tasks)
        _check(len(self.budgets) > 0 and all(b >= 1 for b in self.budgets),
               f"budgets must be positive numbers of labelled scenes, got {self.budgets}")
        _check(len(self.tasks) > 0 and all(t in TASKS for t in self.tasks),
               f"tasks must be some of {TASKS}, got {self.tasks}")
        _check(self.seeds >= 1, f"seeds must be at least 1, got {self.seeds}")
        _check(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        _check(self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}")
        _check(self.n_test >= 1 and self.n_train >= 1, "n_test and n_train must be at least 1")
        _check(self.cnn_width >= 1, "cnn_width must be at least 1")


def task_scenes(task: str, split: str, n: int, model_cfg: ModelConfig, digit_size: int, seed: int,
                data_dir: str | None = None):
    """Labelled scenes for a task: 0-2 digits for ``sum``, exactly 2 for ``ascending`` (the order of fewer
    digits is not defined). Returns (scenes, labels, n_classes)."""

    counts = (0, 1, 2) if task == "sum" else (2,)
    sc = SceneConfig(canvas_size=model_cfg.image_size, digit_size=digit_size, counts=counts, seed=seed)
    scenes = load_or_make_scenes(split, n, sc, data_dir=data_dir)
    if task == "sum":
        return scenes, sum_labels(scenes.labels), 9 * scenes.labels.shape[1] + 1
    return scenes, ascending_labels(scenes.ink_boxes, scenes.labels), 2


def downstream(cfg: DownstreamConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train (or load) AIR, then for each task, budget and seed train the latent MLP and the pixel CNN on the
    same labelled scenes and score both on held-out scenes; write ``downstream.json``, ``.md``, ``.png``, ``.svg``."""

    out_dir = Path(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.time()
    if cfg.model_run:
        model = AIR.load(cfg.model_run)
        run_cfg, air_info = None, {"run": cfg.model_run, "trained_here": False}
    else:
        run_cfg = RunConfig(model=cfg.model, train=TrainConfig(steps=cfg.steps, seed=cfg.seed, threads=cfg.threads,
                                                               n_train=cfg.n_train, n_test=cfg.n_test,
                                                               digit_size=cfg.digit_size,
                                                               eval_size=min(2000, cfg.n_test),
                                                               checkpoint_every=max(cfg.steps, 1000),
                                                               data_seed=cfg.data_seed, data_dir=cfg.data_dir))
        run_dir = out_dir / "downstream_runs" / "air"
        model, summary, reused = _train_or_reuse(run_cfg, run_dir, progress)
        air_info = {"run": str(run_dir), "trained_here": not reused, "steps": summary["steps"],
                    "train_minutes": summary["train_minutes"], "held_out_count_acc": summary["held_out_count_acc"]}
    model = model.cpu().eval()
    air_minutes = (time.time() - started) / 60
    mc = model.config
    digit_size = cfg.digit_size
    n_pool = max(cfg.budgets)
    results: dict[str, Any] = {}
    for ti, task in enumerate(cfg.tasks):
        # labelled scenes from MNIST train digits (new layouts, not AIR's training scenes), test from test digits
        pool, y_pool, n_classes = task_scenes(task, "train", n_pool, mc, digit_size, cfg.data_seed + 10 + ti,
                                              cfg.data_dir)
        test, y_test, _ = task_scenes(task, "test", cfg.n_test, mc, digit_size, cfg.data_seed + 20 + ti, cfg.data_dir)
        t0 = time.time()
        f_pool = torch.from_numpy(latent_features(model.infer(pool.images), mc.max_steps))
        inferred = model.infer(test.images)
        f_test = torch.from_numpy(latent_features(inferred, mc.max_steps))
        test_count_acc = float((inferred.counts.numpy() == test.counts).mean())
        infer_s = time.time() - t0
        mean, std = f_pool.mean(0), f_pool.std(0).clamp_min(1e-3)
        f_pool, f_test = (f_pool - mean) / std, (f_test - mean) / std  # standardised on the labelled pool
        x_pool, x_test = as_float_batch(torch.from_numpy(pool.images)), as_float_batch(torch.from_numpy(test.images))
        yp, yt = torch.from_numpy(y_pool), torch.from_numpy(y_test)
        majority = float((y_test == np.bincount(y_pool, minlength=n_classes).argmax()).mean())
        rows = []
        for budget in cfg.budgets:
            for s in range(cfg.seeds):
                seed = cfg.seed + s
                idx = torch.randperm(n_pool, generator=torch.Generator().manual_seed(1000 * seed + budget))[:budget]
                row = {"budget": budget, "seed": seed, "steps": cfg.classifier.steps(budget)}
                for name, make, xtr, xte in (
                        ("latents", lambda f=f_pool.shape[1], c=n_classes: LatentMLP(f, c), f_pool, f_test),
                        ("cnn", lambda c=n_classes: PixelCNN(c, mc.image_size, cfg.cnn_width), x_pool, x_test)):
                    t1 = time.time()
                    torch.manual_seed(seed)
                    net = train_classifier(make(), xtr[idx], yp[idx], cfg.classifier, seed)
                    row[name] = _accuracy(net, xte, yt)
                    row[f"{name}_seconds"] = round(time.time() - t1, 2)
                rows.append(row)
                if progress:
                    print(f"{task}: {budget} labels, seed {seed}: latents {row['latents']:.3f}, cnn {row['cnn']:.3f}",
                          flush=True)
        summary_rows = []
        for budget in cfg.budgets:
            sel = [r for r in rows if r["budget"] == budget]
            summary_rows.append({"budget": budget, **{
                f"{k}_{stat}": float(fn([r[k] for r in sel])) for k in ("latents", "cnn")
                for stat, fn in (("mean", np.mean), ("std", np.std))}})
        results[task] = {"n_classes": n_classes, "n_test": len(test), "labelled_pool": n_pool,
                         "scene_counts": list(pool.config.counts), "majority_class_acc": majority,
                         "air_count_acc_on_test": test_count_acc, "inference_seconds": round(infer_s, 2),
                         "summary": summary_rows, "runs": rows}
    out = {"experiment": "downstream", "config": dataclasses.asdict(cfg), "air": air_info,
           "air_model": dataclasses.asdict(mc),
           "definitions": {
               "sum": "sum of the digit classes in a scene of 0-2 digits (classes 0..18)",
               "ascending": "scenes of exactly 2 digits; 1 iff the left digit's class is strictly smaller than the "
                            "right one's (left/right by the centre x of the digits' ink boxes)",
               "latents": "per inferred object (presence 1, z_where s/x/y, z_what), objects sorted by window centre "
                          "x, padded to N slots with zeros; standardised; MLP 2x256",
               "cnn": "3 conv layers (5x5, 5x5, 3x3; max-pooling) + MLP 256 on the raw 50x50 pixels",
               "training": "both classifiers: Adam, the same labelled scenes and the same number of steps per budget"},
           "results": results, "air_minutes": round(air_minutes, 2),
           "minutes": round((time.time() - started) / 60, 2), "threads": torch.get_num_threads(),
           "torch": torch.__version__, **record()}
    write_downstream(out, out_dir)
    return out


def downstream_table(out: dict) -> str:
    c = out["config"]
    lines = [f"Held-out accuracy ({c['n_test']} scenes of MNIST test digits per task), mean ± std over "
             f"{c['seeds']} seeds (labelled subset and classifier initialisation).", "",
             "| task | labelled scenes | AIR latents + MLP | CNN on pixels | majority class |",
             "| --- | --- | --- | --- | --- |"]
    for task, r in out["results"].items():
        for row in r["summary"]:
            cell = {k: f"{row[k + '_mean']:.1%} ± {row[k + '_std']:.1%}" for k in ("latents", "cnn")}
            best = max(("latents", "cnn"), key=lambda k: row[k + "_mean"])
            cell[best] = f"**{cell[best]}**"  # the better of the two
            lines.append(f"| {task} | {row['budget']:,} | {cell['latents']} | {cell['cnn']} | "
                         f"{r['majority_class_acc']:.1%} |")
    return "\n".join(lines) + "\n"


def write_downstream(out: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "downstream.json", out)
    _write_text(out_dir / "downstream.md", downstream_table(out))
    downstream_figure(out, out_dir / "downstream.png")


def downstream_figure(out: dict, path: Path) -> Path:
    """One panel per task: both classifiers' held-out accuracy against the number of labelled scenes (log
    axis), the mean over seeds with a band from the worst to the best seed, the majority class dashed. PNG
    and SVG; redraws from a ``downstream.json`` as well (``downstream_figure(json.load(f), path)``)."""
    from ..visualise import line_panels

    panels = []
    for task, r in out["results"].items():
        budgets = [row["budget"] for row in r["summary"]]
        series, bands = {}, {}
        for key, name in (("latents", "AIR latents + MLP"), ("cnn", "CNN on pixels")):
            per_budget = [[run[key] for run in r["runs"] if run["budget"] == b] for b in budgets]
            label = f"{name} ({max(map(len, per_budget), default=0)} seeds)"
            series[label] = (budgets, [row[f"{key}_mean"] for row in r["summary"]])
            bands[label] = (budgets, [min(v) for v in per_budget], [max(v) for v in per_budget])
        styles = {label: {"marker": "o", "markersize": 4} for label in series}  # the budgets measured
        what = {"sum": "sum of the digits", "ascending": "left digit < right digit"}.get(task)
        panels.append(dict(series=series, bands=bands, styles=styles,
                           title=f"{task}{f': {what}' if what else ''} ({r['n_classes']} classes)",
                           xlabel="labelled scenes (log scale)", ylabel="held-out accuracy" if not panels else "",
                           y_range=(0.0, 1.0), hlines=(r["majority_class_acc"],), hline_label="majority class",
                           xlog=True, percent=True, legend_loc="lower right"))
    return line_panels(panels, path, title="Downstream tasks: mean over seeds, band from the worst to the best seed",
                       figsize=(4.2 * len(panels), 3.6), dpi=150)
