"""The paper's experiments (Eslami et al., 2016, section 3.1), each one function and one command.

* :func:`generalisation` (``air experiment generalisation``): train AIR and DAIR on scenes with some digit
  counts and measure count accuracy on scenes with a count never seen in training: *extrapolation* (train on
  0, 1, 2 digits, test on 3) and *interpolation* (train on 0, 1, 3, test on 2).
* :func:`downstream` (``air experiment downstream``): the learned representation as features for two
  supervised tasks, the sum of the digits in a scene and whether they are in ascending order from left to
  right: a small MLP on AIR's latents (per object: presence, z_where, z_what, ordered by the window's x)
  against a convolutional network on the raw pixels, both given the same labelled scenes, for several label
  budgets.

Both write ``NAME.json`` (everything measured and the exact configuration), ``NAME.md`` (the table) and
``NAME.png`` and ``NAME.svg`` (the figure) into an output folder, and keep their training runs under
``OUT/NAME_runs/`` (a run directory that already holds a finished run with the same configuration is reused, not
trained again).

Data settings, both stated in the JSON:

* Three unscaled 28x28 digits do not fit on a 50x50 canvas with their ink apart: only about 0.4% of random
  placements work (the generator refuses below 1%). The paper's two settings therefore use **24x24 digits** and
  **N = 3** steps: *extrapolation* (train 0, 1, 2; test 3: to count 3 the model must use every step it has) and
  *interpolation* (train 0, 1, 3; test 2). *extrapolation_n4* goes one step further (train 0, 1, 2; test 3 and
  4) with **20x20 digits** (four of them fit apart) and **N = 4**, so that a model can also answer too many
  (``SETTING_SCENES``; ``max_steps`` and ``digit_size`` override them). Ink never overlaps, in training and test
  scenes alike.
* Three models: the paper's AIR and DAIR, and DAIR without memory between steps (``ModelConfig.dair_memory``,
  ours): each step's LSTM starts from its initial state with no previous latents, so every step is the same
  function of the residual image and the step index cannot tell it to go on or stop.
* The downstream experiment uses the paper's data as ``air train`` does (28x28 digits, 0-2 per scene).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig, RunConfig, TrainConfig, _check
from .errors import InputError
from .files import atomic_write
from .provenance import record

#: The generalisation settings: the counts seen in training and the counts held back for testing.
SETTINGS = {"extrapolation": ((0, 1, 2), (3,)), "extrapolation_n4": ((0, 1, 2), (3, 4)),
            "interpolation": ((0, 1, 3), (2,))}
#: The scenes of each setting: N (max_steps) and the digit size. The paper's two settings count up to 3 with
#: N = 3 (24 px digits: three fit apart on 50x50); extrapolation_n4 is scored on 3 and 4 digits, so it needs
#: N = 4 and digits small enough that four fit apart (20 px; at 24 px only 0.7% of placements keep four apart).
SETTING_SCENES = {"extrapolation": {"max_steps": 3, "digit_size": 24},
                  "extrapolation_n4": {"max_steps": 4, "digit_size": 20},
                  "interpolation": {"max_steps": 3, "digit_size": 24}}
#: Count accuracy on the unseen count in the paper (read off its figure of this experiment; it shows no 4-digit
#: test, no N = 4 model and no memoryless DAIR, hence None).
PAPER_GENERALISATION = {"extrapolation": {3: {"air": 0.0, "dair": 0.80, "dair_memoryless": None}},
                        "extrapolation_n4": {3: {"air": None, "dair": None, "dair_memoryless": None},
                                             4: {"air": None, "dair": None, "dair_memoryless": None}},
                        "interpolation": {2: {"air": 0.60, "dair": 0.95, "dair_memoryless": None}}}
#: air: the paper's AIR; dair: the paper's Difference AIR; dair_memoryless: DAIR whose steps have no memory
#: (ModelConfig.dair_memory = False): each step is one function of the residual image
MODELS = ("air", "dair", "dair_memoryless")
LABELS = {"air": "AIR", "dair": "DAIR", "dair_memoryless": "DAIR, memoryless"}
TASKS = ("sum", "ascending")


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda f: f.write(text.encode()))


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


# ============================================================================================================
# Training (shared): a run directory reused when it already holds a finished run with the same configuration
# ============================================================================================================
def _finished(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether ``run_dir`` holds a finished run of ``cfg`` (the thread count, which changes no result, aside)."""
    try:
        saved = RunConfig.from_file(run_dir / "config.json")
        saved.train.threads = cfg.train.threads
        return (run_dir / "summary.json").is_file() and (run_dir / "last.pt").is_file() and saved == cfg
    except (InputError, ValueError, TypeError, AttributeError):  # no run, another kind of file, another version
        return False


def _train_or_reuse(cfg: RunConfig, run_dir: Path, progress: bool, extra_eval=None) -> tuple[Any, dict, bool]:
    """(model, summary, reused): train ``cfg`` into ``run_dir``, or load the finished run already there.
    ``extra_eval(model, step)`` is called at every periodic evaluation of a new run (for learning curves)."""
    from .model import AIR
    from .train import Trainer

    if _finished(run_dir, cfg):
        return AIR.load(run_dir / "last.pt"), json.loads((run_dir / "summary.json").read_text()), True

    # a run of another configuration (or an unfinished one) in the way is replaced: the experiment owns its
    # run folders, and the trainer refuses to start afresh over a run's files
    for stale in ("last.pt", "best.pt", "metrics.jsonl", "summary.json", "unseen_count_curve.json"):
        (run_dir / stale).unlink(missing_ok=True)
    trainer = Trainer(cfg, run_dir, progress=progress, tensorboard=False, on_eval=extra_eval)
    summary = trainer.fit()
    if summary.get("interrupted"):
        raise KeyboardInterrupt
    return trainer.model.cpu(), summary, False


def _count_accuracy(model, images: np.ndarray, counts: np.ndarray) -> tuple[float, list[int]]:
    """Count accuracy and the histogram of predicted counts (0..N)."""
    pred = model.infer(images).counts.numpy()
    hist = np.bincount(pred, minlength=model.config.max_steps + 1)
    return float((pred == counts).mean()) if len(counts) else float("nan"), [int(h) for h in hist]


# ============================================================================================================
# Generalisation: AIR vs DAIR on digit counts never seen in training
# ============================================================================================================
@dataclass
class GeneralisationConfig:
    """``air experiment generalisation``. The defaults are the full experiment: for each of ``seeds`` seeds, each
    setting and each model one training run of ``steps`` steps."""

    steps: int = 3000  # training steps of each run
    seed: int = 0  # the first seed; the runs use seed, seed + 1, ..., seed + seeds - 1
    seeds: int = 3
    threads: int | None = None  # torch threads of each run (None: torch's choice, or cores / jobs with jobs > 1)
    jobs: int = 1  # runs trained at once, each in a process of its own (two one-thread runs beat one
    # two-thread run on a 2-core machine: the networks are too small to keep two threads busy)
    settings: tuple[str, ...] = tuple(SETTINGS)
    models: tuple[str, ...] = MODELS
    max_steps: int | None = None  # N; None: the setting's (SETTING_SCENES)
    digit_size: int | None = None  # None: the setting's (SETTING_SCENES)
    n_train: int = 60_000  # training scenes per run (MNIST train digits)
    n_heldout: int = 2_000  # held-out scenes with the training counts (MNIST test digits)
    n_test: int = 2_000  # held-out scenes per unseen count (MNIST test digits)
    eval_every: int = 500  # learning curve: accuracy on the unseen counts every this many steps
    batch_size: int = 64
    data_seed: int = 0
    data_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)  # everything but max_steps, dair and dair_memory

    def __post_init__(self) -> None:
        self.settings, self.models = tuple(self.settings), tuple(self.models)
        _check(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        _check(self.seeds >= 1, f"seeds must be at least 1, got {self.seeds}")
        _check(self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}")
        _check(self.jobs >= 1, f"jobs must be at least 1, got {self.jobs}")
        _check(len(self.settings) > 0 and all(s in SETTINGS for s in self.settings),
               f"settings must be some of {tuple(SETTINGS)}, got {self.settings}")
        _check(len(self.models) > 0 and all(m in MODELS for m in self.models),
               f"models must be some of {MODELS}, got {self.models}")
        most = max(max(SETTINGS[s][0] + SETTINGS[s][1]) for s in self.settings)
        _check(self.max_steps is None or self.max_steps >= most, f"max_steps (N) must be at least {most} to count "
               f"{most} digits, got {self.max_steps}")
        for name in ("n_train", "n_heldout", "n_test", "eval_every", "batch_size"):
            _check(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        _check(self.digit_size is None or self.digit_size >= 1, f"digit_size must be at least 1, got {self.digit_size}")

    def scenes(self, setting: str) -> tuple[int, int]:
        """(N, digit size) of ``setting``'s runs and scenes."""
        own = SETTING_SCENES[setting]
        return (self.max_steps if self.max_steps is not None else own["max_steps"],
                self.digit_size if self.digit_size is not None else own["digit_size"])

    def run_threads(self) -> int | None:
        """torch threads of each run: ``threads``, or with several jobs the cores shared out among them."""
        if self.threads is not None or self.jobs == 1:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.jobs)

    def run_config(self, setting: str, model: str, seed: int | None = None) -> RunConfig:
        counts, _ = SETTINGS[setting]
        n, size = self.scenes(setting)
        m = dataclasses.replace(self.model, max_steps=n, dair=model != "air", dair_memory=model != "dair_memoryless")
        t = TrainConfig(steps=self.steps, seed=self.seed if seed is None else seed, threads=self.run_threads(),
                        batch_size=self.batch_size, eval_every=self.eval_every, eval_size=self.n_heldout,
                        checkpoint_every=max(self.steps, 1000), n_train=self.n_train, n_test=self.n_heldout,
                        digit_size=size, counts=counts, data_seed=self.data_seed, data_dir=self.data_dir)
        return RunConfig(model=m, train=t)


def unseen_count_scenes(cfg: GeneralisationConfig, count: int, setting: str):
    """Held-out scenes (MNIST test digits) that all hold ``count`` digits, drawn like ``setting``'s training
    scenes."""
    from .data import SceneConfig, load_or_make_scenes

    sc = SceneConfig(canvas_size=cfg.model.image_size, digit_size=cfg.scenes(setting)[1], counts=(count,),
                     seed=cfg.data_seed + 2)
    return load_or_make_scenes("test", cfg.n_test, sc, data_dir=cfg.data_dir)


def generalisation(cfg: GeneralisationConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train AIR and DAIR for each setting and seed, score count accuracy on each unseen count (and on the
    training counts), and write ``generalisation.json``, ``.md`` and ``.png`` into ``out_dir``. Returns the
    JSON's dict: per setting and model, each seed's numbers and their mean and spread."""
    out_dir = Path(out_dir)
    if cfg.run_threads():
        torch.set_num_threads(cfg.run_threads())
    started = time.time()
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    jobs = [(setting, name, seed) for setting in cfg.settings for name in cfg.models for seed in seeds]
    if cfg.jobs == 1:
        tests = {s: _unseen_tests(cfg, s) for s in cfg.settings}
        runs = {job: _generalisation_run(cfg, *job, tests[job[0]], out_dir, progress) for job in jobs}
    else:
        runs = _parallel_runs(cfg, jobs, out_dir, progress)
    results: dict[str, dict] = {}
    for setting in cfg.settings:
        train_counts, test_counts = SETTINGS[setting]
        n, size = cfg.scenes(setting)
        results[setting] = {"train_counts": list(train_counts), "test_counts": list(test_counts), "N": n,
                            "digit_size": size}
        for name in cfg.models:
            own = [runs[(setting, name, seed)] for seed in seeds]
            results[setting][name] = {"runs": own, "summary": _spread(own, test_counts)}
    out = {"experiment": "generalisation", "config": dataclasses.asdict(cfg),
           "settings": {"canvas": cfg.model.image_size, "overlap": "ink boxes disjoint", "test_digits": "MNIST test",
                        "model": "final model (last.pt) of each run"},
           "paper": {s: {str(c): v for c, v in p.items()} for s, p in PAPER_GENERALISATION.items()},
           "results": results, "minutes": round((time.time() - started) / 60, 2),
           "threads": torch.get_num_threads(), "jobs": cfg.jobs, "torch": torch.__version__, **record()}
    write_generalisation(out, out_dir)
    return out


def _unseen_tests(cfg: GeneralisationConfig, setting: str) -> dict:
    return {c: unseen_count_scenes(cfg, c, setting) for c in SETTINGS[setting][1]}


def _generalisation_job(cfg: GeneralisationConfig, setting: str, name: str, seed: int, out_dir: str) -> dict:
    """One run in a worker process of its own (``jobs`` > 1)."""
    if cfg.run_threads():
        torch.set_num_threads(cfg.run_threads())
    return _generalisation_run(cfg, setting, name, seed, _unseen_tests(cfg, setting), Path(out_dir), False)


def _parallel_runs(cfg: GeneralisationConfig, jobs: list[tuple], out_dir: Path, progress: bool) -> dict:
    """The runs of ``jobs`` trained ``cfg.jobs`` at a time, each in a fresh process ("spawn": no threads or
    compiled state inherited), with one line per finished run instead of progress bars."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out = {}
    with ProcessPoolExecutor(cfg.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_generalisation_job, cfg, *job, str(out_dir)): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            out[job] = run = future.result()
            if progress:
                scores = ", ".join(f"{c} digits {a:.1%}" for c, a in run["unseen_count_acc"].items())
                print(f"[{len(out)}/{len(jobs)}] {job[0]} {LABELS[job[1]]} seed {job[2]}: {scores} "
                      f"({run['wall_minutes']} min{', reused' if run['reused_run'] else ''})", flush=True)
    return out


def _generalisation_run(cfg: GeneralisationConfig, setting: str, name: str, seed: int, tests: dict,
                        out_dir: Path, progress: bool) -> dict:
    """One training run of the experiment (or the finished run already in its folder) and its scores."""
    run_cfg = cfg.run_config(setting, name, seed)
    run_dir = out_dir / "generalisation_runs" / f"{setting}-{name}-seed{seed}"
    curve: list[list] = []
    record = lambda model, step: curve.append(  # noqa: E731
        [step, {str(c): _count_accuracy(model, t.images, t.counts)[0] for c, t in tests.items()}])
    t0 = time.time()
    model, summary, reused = _train_or_reuse(run_cfg, run_dir, progress, record)
    scores = {str(c): _count_accuracy(model, t.images, t.counts) for c, t in tests.items()}
    final = {c: acc for c, (acc, _) in scores.items()}
    if reused:  # the learning curve recorded when the run was trained
        curve = _read_json(run_dir / "unseen_count_curve.json").get("curve", [])
    if not curve or curve[-1][0] != summary["steps"]:
        curve.append([summary["steps"], final])
    _write_json(run_dir / "unseen_count_curve.json", {"curve": curve})
    return {"seed": seed, "unseen_count_acc": final,
            "predicted_count_histogram": {c: hist for c, (_, hist) in scores.items()},
            "n_unseen": {str(c): len(t) for c, t in tests.items()},
            "seen_counts_acc": summary["held_out_count_acc"], "n_seen": summary["held_out_n"],
            "restarts": len(summary.get("restarts", [])), "traps": [t["name"] for t in summary.get("traps", [])],
            "precision": summary.get("precision"), "compiled": summary.get("compiled"),
            "train_minutes": summary["train_minutes"], "wall_minutes": round((time.time() - t0) / 60, 2),
            "reused_run": reused, "run_dir": str(run_dir), "curve": curve}


def _spread(runs: list[dict], test_counts) -> dict:
    """Mean, standard deviation, min and max over the seeds, per unseen count and for the training counts."""
    def stats(values):
        v = np.asarray(values, np.float64)
        return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
    return {"unseen_count_acc": {str(c): stats([r["unseen_count_acc"][str(c)] for r in runs]) for c in test_counts},
            "seen_counts_acc": stats([r["seen_counts_acc"] for r in runs]), "seeds": [r["seed"] for r in runs]}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def generalisation_table(out: dict) -> str:
    c = out["config"]
    seeds = f"seeds {c['seed']}-{c['seed'] + c['seeds'] - 1}" if c["seeds"] > 1 else f"seed {c['seed']}"
    lines = [f"Count accuracy on scenes with a digit count never seen in training ({c['n_test']} held-out scenes of "
             f"MNIST test digits per count; {c['steps']} training steps per run, {seeds}, mean +- std over the "
             f"seeds (min-max), on a {out['settings']['canvas']} px canvas).", "",
             "| setting (N, digit size) | train counts | test count | model | accuracy on the unseen count | paper | "
             "accuracy on the training counts | restarts |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for setting, r in out["results"].items():
        for count in r["test_counts"]:
            for name in MODELS:
                if name not in r:
                    continue
                u, seen = r[name]["summary"]["unseen_count_acc"][str(count)], r[name]["summary"]["seen_counts_acc"]
                paper = out["paper"][setting][str(count)][name]
                lines.append(f"| {setting} (N = {r['N']}, {r['digit_size']} px) | "
                             f"{','.join(map(str, r['train_counts']))} | {count} | {LABELS[name]} | "
                             f"**{u['mean']:.1%}** +- {u['std']:.1%} ({u['min']:.1%}-{u['max']:.1%}) | "
                             f"{'about ' + format(paper, '.0%') if paper is not None else 'not shown'} | "
                             f"{seen['mean']:.1%} (min {seen['min']:.1%}) | "
                             f"{sum(run['restarts'] for run in r[name]['runs'])} |")
    return "\n".join(lines) + "\n"


def write_generalisation(out: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "generalisation.json", out)
    _write_text(out_dir / "generalisation.md", generalisation_table(out))
    generalisation_figure(out, out_dir / "generalisation.png")


def generalisation_figure(out: dict, path: Path) -> None:
    """One panel per setting and unseen count: each model's mean accuracy on the unseen count against training
    steps, a band from the worst to the best seed, the paper's reading as a dashed line. PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    panels = [(setting, count) for setting, r in out["results"].items() for count in r["test_counts"]]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharey=True, squeeze=False)
    colours = {"air": "tab:red", "dair": "tab:blue", "dair_memoryless": "tab:green"}
    for ax, (setting, count) in zip(axes[0], panels):
        r = out["results"][setting]
        for name in MODELS:
            curves = [run["curve"] for run in r.get(name, {}).get("runs", []) if run["curve"]]
            if not curves:
                continue
            steps = sorted(set.intersection(*[{p[0] for p in cv} for cv in curves]))
            values = np.array([[dict(cv)[s][str(count)] for cv in curves] for s in steps])
            ax.plot(steps, values.mean(1), color=colours[name], label=f"{LABELS[name]} ({len(curves)} seeds)")
            ax.fill_between(steps, values.min(1), values.max(1), color=colours[name], alpha=0.2, linewidth=0)
            paper = out["paper"][setting][str(count)][name]
            if paper is not None:
                ax.axhline(paper, color=colours[name], linestyle="--", linewidth=1)
        ax.set_title(f"{setting}: train on {','.join(map(str, r['train_counts']))}, test on {count}\n"
                     f"(N = {r['N']}, {r['digit_size']} px digits)", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("count accuracy on the unseen count")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Counts never seen in training: mean over seeds, band from worst to best seed, dashed: the paper",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.savefig(Path(path).with_suffix(".svg"))
    plt.close(fig)


# ============================================================================================================
# Downstream tasks on the learned representation
# ============================================================================================================
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
    from .data import SceneConfig, load_or_make_scenes

    counts = (0, 1, 2) if task == "sum" else (2,)
    sc = SceneConfig(canvas_size=model_cfg.image_size, digit_size=digit_size, counts=counts, seed=seed)
    scenes = load_or_make_scenes(split, n, sc, data_dir=data_dir)
    if task == "sum":
        return scenes, sum_labels(scenes.labels), 9 * scenes.labels.shape[1] + 1
    return scenes, ascending_labels(scenes.ink_boxes, scenes.labels), 2


def downstream(cfg: DownstreamConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Train (or load) AIR, then for each task, budget and seed train the latent MLP and the pixel CNN on the
    same labelled scenes and score both on held-out scenes; write ``downstream.json``, ``.md``, ``.png``, ``.svg``."""
    from .evaluate import as_float_batch
    from .model import AIR

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
    from .visualise import line_panels

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


__all__ = ["GeneralisationConfig", "DownstreamConfig", "ClassifierConfig", "generalisation", "downstream",
           "sum_labels", "ascending_labels", "digit_order", "latent_features", "SETTINGS", "PAPER_GENERALISATION"]

