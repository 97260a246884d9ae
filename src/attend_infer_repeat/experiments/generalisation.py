"""Generalisation (the paper's section 3.1): AIR and DAIR trained on some digit counts, scored on counts never
seen in training."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig, RunConfig, TrainConfig, _check
from ..data import SceneConfig, load_or_make_scenes
from ..data.datasets import run_test_data
from ..model.refine import PROCEDURE as REFINE_PROCEDURE
from ..provenance import record
from .runs import _count_accuracy, _read_json, _train_or_reuse, _write_json, _write_text

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


@dataclass
class GeneralisationConfig:
    """``air experiment generalisation``. The defaults are the full experiment: for each of ``seeds`` seeds, each
    setting and each model one training run of ``steps`` steps."""

    steps: int = 3000  # training steps of each run
    seed: int = 0  # the first seed; the runs use seed, seed + 1, ..., seed + seeds - 1
    seeds: int = 3
    threads: int | None = None  # torch threads of each run (None: torch's choice, or cores / jobs with jobs > 1)
    # runs trained at once, each in a process of its own; None: as many as the cores hold at ``threads`` each
    # (1 thread: two one-thread runs beat one two-thread run on a 2-core machine, the networks being too small to
    # keep two threads busy), never more than there are runs
    jobs: int | None = None
    settings: tuple[str, ...] = tuple(SETTINGS)
    models: tuple[str, ...] = MODELS
    max_steps: int | None = None  # N; None: the setting's (SETTING_SCENES)
    digit_size: int | None = None  # None: the setting's (SETTING_SCENES)
    n_train: int = 60_000  # training scenes per run (MNIST train digits)
    n_heldout: int = 2_000  # held-out scenes with the training counts (MNIST test digits)
    n_test: int = 2_000  # held-out scenes per unseen count (MNIST test digits)
    eval_every: int = 500  # learning curve: accuracy on the unseen counts every this many steps
    batch_size: int = 64
    # the final model of each run also counted by the refined count (AIR.infer(refine_steps=...), model/refine.py:
    # each count's latents refined and the count with the best importance-weighted ELBO chosen), beside the
    # guide's count, on the first refine_scenes scenes of each unseen count and of the held-out training counts;
    # 0: the guide's count only (fewer scenes than the guide is scored on: refining a run's scenes costs more than
    # training it, and the experiment is meant to fit in about 45 minutes on 2 cores)
    refine_steps: int = 100
    refine_samples: int = 128
    refine_scenes: int = 200
    data_seed: int = 0
    data_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)  # everything but max_steps, dair and dair_memory

    def __post_init__(self) -> None:
        self.settings, self.models = tuple(self.settings), tuple(self.models)
        _check(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        _check(self.seeds >= 1, f"seeds must be at least 1, got {self.seeds}")
        _check(self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}")
        _check(self.jobs is None or self.jobs >= 1, f"jobs must be at least 1, got {self.jobs}")
        _check(len(self.settings) > 0 and all(s in SETTINGS for s in self.settings),
               f"settings must be some of {tuple(SETTINGS)}, got {self.settings}")
        _check(len(self.models) > 0 and all(m in MODELS for m in self.models),
               f"models must be some of {MODELS}, got {self.models}")
        most = max(max(SETTINGS[s][0] + SETTINGS[s][1]) for s in self.settings)
        _check(self.max_steps is None or self.max_steps >= most, f"max_steps (N) must be at least {most} to count "
               f"{most} digits, got {self.max_steps}")
        _check(self.refine_steps >= 0, f"refine_steps must be at least 0, got {self.refine_steps}")
        _check(self.refine_samples >= 0, f"refine_samples must be at least 0, got {self.refine_samples}")
        for name in ("n_train", "n_heldout", "n_test", "eval_every", "batch_size", "refine_scenes"):
            _check(getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        _check(self.digit_size is None or self.digit_size >= 1, f"digit_size must be at least 1, got {self.digit_size}")

    def scenes(self, setting: str) -> tuple[int, int]:
        """(N, digit size) of ``setting``'s runs and scenes."""
        own = SETTING_SCENES[setting]
        return (self.max_steps if self.max_steps is not None else own["max_steps"],
                self.digit_size if self.digit_size is not None else own["digit_size"])

    def run_jobs(self) -> int:
        """Runs trained at once: ``jobs``, or as many as the cores hold (see ``jobs``)."""
        if self.jobs is not None:
            return self.jobs
        runs = len(self.settings) * len(self.models) * self.seeds
        return max(1, min(runs, (os.cpu_count() or 1) // (self.threads or 1)))

    def run_threads(self) -> int | None:
        """torch threads of each run: ``threads``, or with several jobs the cores shared out among them."""
        if self.threads is not None or self.run_jobs() == 1:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.run_jobs())

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
    if cfg.run_jobs() == 1:
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
           "threads": torch.get_num_threads(), "jobs": cfg.run_jobs(), "torch": torch.__version__, **record()}
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
    with ProcessPoolExecutor(cfg.run_jobs(), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_generalisation_job, cfg, *job, str(out_dir)): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            out[job] = run = future.result()
            if progress:
                scores = ", ".join(f"{c} digits {a:.1%}" for c, a in run["unseen_count_acc"].items())
                if run["refined"]:
                    scores += " (refined: " + ", ".join(f"{a:.1%}" for a in run["refined"]["unseen_count_acc"].values())
                    scores += f"; training counts {run['refined']['seen_counts_acc']:.1%})"
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
    refined = _refined_scores(cfg, run_cfg, model, tests, run_dir) if cfg.refine_steps else None
    return {"seed": seed, "unseen_count_acc": final, "refined": refined,
            "predicted_count_histogram": {c: hist for c, (_, hist) in scores.items()},
            "n_unseen": {str(c): len(t) for c, t in tests.items()},
            "seen_counts_acc": summary["held_out_count_acc"], "n_seen": summary["held_out_n"],
            "restarts": len(summary.get("restarts", [])), "traps": [t["name"] for t in summary.get("traps", [])],
            "precision": summary.get("precision"), "compiled": summary.get("compiled"),
            "train_minutes": summary["train_minutes"], "wall_minutes": round((time.time() - t0) / 60, 2),
            "reused_run": reused, "run_dir": str(run_dir), "curve": curve}


def _refined_scores(cfg: GeneralisationConfig, run_cfg: RunConfig, model, tests: dict, run_dir: Path) -> dict:
    """The refined count's accuracy on the first ``refine_scenes`` scenes of each unseen count and of the run's
    held-out training-count scenes (kept in the run's folder: a reused run is not refined again)."""
    refine = {"refine_steps": cfg.refine_steps, "refine_samples": cfg.refine_samples}
    # (the procedure's name too: a count kept from an older procedure is refined again)
    settings = {**refine, "refine_scenes": cfg.refine_scenes, "procedure": REFINE_PROCEDURE}
    kept = _read_json(run_dir / "refined_counts.json")
    if kept.get("settings") == settings:  # (a run trained anew deletes it: experiments/runs.py)
        return kept["scores"]
    t0, n = time.time(), cfg.refine_scenes
    unseen = {str(c): _count_accuracy(model, t.images[:n], t.counts[:n], **refine) for c, t in tests.items()}
    held_out = run_test_data(run_cfg)  # the scenes air train scored the run on (its training scenes not loaded)
    seen_acc, seen_hist = _count_accuracy(model, held_out.images[:n], held_out.counts[:n], **refine)
    scores = {"unseen_count_acc": {c: acc for c, (acc, _) in unseen.items()},
              "predicted_count_histogram": {c: hist for c, (_, hist) in unseen.items()},
              "seen_counts_acc": seen_acc, "seen_counts_histogram": seen_hist,
              "n_unseen": {str(c): min(n, len(t)) for c, t in tests.items()},
              "n_seen": min(n, len(held_out.images)), "minutes": round((time.time() - t0) / 60, 2)}
    _write_json(run_dir / "refined_counts.json", {"settings": settings, "scores": scores})
    return scores


def _spread(runs: list[dict], test_counts) -> dict:
    """Mean, standard deviation, min and max over the seeds, per unseen count and for the training counts."""
    def stats(values):
        v = np.asarray(values, np.float64)
        return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())}
    out = {"unseen_count_acc": {str(c): stats([r["unseen_count_acc"][str(c)] for r in runs]) for c in test_counts},
           "seen_counts_acc": stats([r["seen_counts_acc"] for r in runs]), "seeds": [r["seed"] for r in runs]}
    if all(r.get("refined") for r in runs):
        out["refined"] = {"unseen_count_acc": {str(c): stats([r["refined"]["unseen_count_acc"][str(c)] for r in runs])
                                               for c in test_counts},
                          "seen_counts_acc": stats([r["refined"]["seen_counts_acc"] for r in runs])}
    return out



def generalisation_table(out: dict) -> str:
    c = out["config"]
    seeds = f"seeds {c['seed']}-{c['seed'] + c['seeds'] - 1}" if c["seeds"] > 1 else f"seed {c['seed']}"
    refined = bool(c.get("refine_steps"))
    lines = [f"Count accuracy on scenes with a digit count never seen in training ({c['n_test']} held-out scenes of "
             f"MNIST test digits per count; {c['steps']} training steps per run, {seeds}, mean +- std over the "
             f"seeds (min-max), on a {out['settings']['canvas']} px canvas)."]
    if refined:
        lines[0] += (f" Guide: the inference network's count. Refined: `AIR.infer(refine_steps={c['refine_steps']}, "
                     f"refine_samples={c['refine_samples']})` on the first {c['refine_scenes']} scenes of each "
                     "set (each count's latents refined, the count with the best importance-weighted ELBO chosen).")
    head = ["setting (N, digit size)", "train counts", "test count", "model", "unseen count: guide"]
    head += ["unseen count: refined"] if refined else []
    head += ["paper", "training counts: guide" + (" / refined" if refined else ""), "restarts"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    spread = lambda u: f"{u['mean']:.1%} +- {u['std']:.1%} ({u['min']:.1%}-{u['max']:.1%})"  # noqa: E731
    for setting, r in out["results"].items():
        for count in r["test_counts"]:
            for name in MODELS:
                if name not in r:
                    continue
                summary = r[name]["summary"]
                u, seen = summary["unseen_count_acc"][str(count)], summary["seen_counts_acc"]
                paper = out["paper"][setting][str(count)][name]
                cells = [f"{setting} (N = {r['N']}, {r['digit_size']} px)", ",".join(map(str, r["train_counts"])),
                         str(count), LABELS[name], spread(u)]
                seen_text = f"{seen['mean']:.1%} (min {seen['min']:.1%})"
                if refined:
                    ref = summary.get("refined")
                    cells.append(f"**{spread(ref['unseen_count_acc'][str(count)])}**" if ref else "not measured")
                    if ref:
                        s2 = ref["seen_counts_acc"]
                        seen_text += f" / {s2['mean']:.1%} (min {s2['min']:.1%})"
                else:
                    cells[-1] = f"**{cells[-1]}**"
                cells += [f"about {paper:.0%}" if paper is not None else "not shown", seen_text,
                          str(sum(run["restarts"] for run in r[name]["runs"]))]
                lines.append("| " + " | ".join(cells) + " |")
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
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 4.2 * len(panels)), 4.0), sharey=True, squeeze=False)
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
            refined = r[name]["summary"].get("refined")
            if refined:  # the final models' refined count: the seeds' mean, a bar from the worst to the best seed
                u = refined["unseen_count_acc"][str(count)]
                nudge = (MODELS.index(name) - 1) * 0.03 * steps[-1]  # the models' stars side by side
                ax.errorbar([steps[-1] + nudge], [u["mean"]], yerr=[[u["mean"] - u["min"]], [u["max"] - u["mean"]]],
                            color=colours[name], marker="*", markersize=9, capsize=3, linestyle="none",
                            label=f"{LABELS[name]}, refined count")
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
    fig.suptitle("Counts never seen in training. Lines: the guide's count, mean over seeds (band: worst to\n"
                 "best seed); stars: the final models' refined count; dashed: the paper",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.savefig(Path(path).with_suffix(".svg"))
    plt.close(fig)
