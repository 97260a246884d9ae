"""Checkpoints: written atomically (a crash mid-write never leaves a half-written file in place of a good one)
and loaded safely (``torch.load(weights_only=True)``: tensors and plain Python values only, no code runs).

A checkpoint is a dict with a format tag, the full run configuration, the model's weights and, for resuming,
the optimiser state, the RNG states and the step."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .errors import CheckpointError, InputError
from .files import atomic_write
from .model import build_model
from .runtime import pick_device

FORMAT = "attend-infer-repeat/checkpoint"
VERSION = 1


def atomic_write_bytes(path: str | Path, write) -> None:
    """:func:`files.atomic_write` for run files: a failure (full disk, unwritable folder) is a CheckpointError
    that says so, and the previous file stays intact."""
    try:
        atomic_write(path, write)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}; the previous file (if any) is unchanged; "
                              "free disk space or choose a writable folder") from e


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (``state`` must hold tensors and plain Python values only)."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best.pt, else last.pt)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"{p} is a folder without best.pt or last.pt; pass a run directory that "
                              "'air train' wrote, or a .pt file")
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p}")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; every failure is a CheckpointError saying what is wrong with the file."""
    p = resolve_checkpoint(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, or a pickle that wants to run code
        if "Unsupported global" in str(e):  # the pickle asks for a class or function: code to run
            raise CheckpointError(f"{p} holds Python objects other than tensors and plain values; it is refused, "
                                  "since loading it could run code: pass a checkpoint written by 'air train'") from e
        raise CheckpointError(f"{p} is not a readable attend-infer-repeat checkpoint (it may be truncated, "
                              f"corrupt, or another kind of file): {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is a torch file but not an attend-infer-repeat checkpoint "
                              "(no format tag); pass a .pt file written by 'air train'")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{p} was written by a newer attend-infer-repeat (checkpoint version "
                              f"{state['version']}); upgrade the package")
    for key in ("config", "model"):
        if key not in state:
            raise CheckpointError(f"{p} has no '{key}' entry; it is incomplete")
    return state


def load_run(path: str | Path, device: str | torch.device = "cpu"):
    """A checkpoint file or run directory -> ``(model in eval mode (AIR or GridAIR), RunConfig, training step)``.

    The step matters for an annealed count prior: the ELBO is measured against the prior the model had then."""
    p = resolve_checkpoint(path)
    state = load_checkpoint(p)
    config = saved_config(state, p)
    device = pick_device(device) if isinstance(device, str) else device
    model = build_model(config.model)
    weights = state["model"]
    if _baseline_differs(model, weights):
        # an NVIL baseline of an option since removed (a pooled or shared image input): it only ever served
        # training's gradient estimate, so the model is complete without it
        model.baseline = None
        weights = {k: v for k, v in weights.items() if not k.startswith("baseline.")}
    check_state_dict(model, weights, p)
    check_finite(weights, p)
    model.load_state_dict(weights)
    step = state.get("step", 0)
    return model.to(device).eval(), config, int(step) if isinstance(step, int) else 0


def saved_config(state: dict[str, Any], path) -> RunConfig:
    """The run configuration a loaded checkpoint holds; CheckpointError if this version cannot build it."""
    try:
        return RunConfig.from_dict(state["config"])
    except (InputError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: its configuration is not one this version understands: {e}") from e


def training_progress(state: dict[str, Any], path) -> tuple[int, float]:
    """(step, training seconds) of a checkpoint a run resumes from; CheckpointError if they are damaged."""
    step, seconds = state.get("step"), state.get("train_seconds")
    if type(step) is not int or step < 0 or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not math.isfinite(seconds):
        raise CheckpointError(f"{path} cannot be resumed from: its training state is damaged (step {step!r}, clock "
                              f"{seconds!r}); evaluate best.pt, or start a new run in another --run-dir")
    return step, float(seconds)


def _baseline_differs(model, weights: dict[str, torch.Tensor]) -> bool:
    own = {k: v for k, v in model.state_dict().items() if k.startswith("baseline.")}
    theirs = {k: v for k, v in weights.items() if k.startswith("baseline.")}
    return set(own) != set(theirs) or any(own[k].shape != theirs[k].shape for k in own)


def initial_weights(path: str | Path, model) -> dict[str, torch.Tensor]:
    """The weights a run starts from (``air train --init-from``), checked to fit ``model``.

    The model's sizes must be the checkpoint's; its priors, likelihood, composition and estimator may differ
    (none of them has weights). The NVIL baseline is kept where it fits; it serves only training's gradient
    estimate, so a model that has none (or another) starts with its own new one."""
    p = resolve_checkpoint(path)
    weights = load_checkpoint(p)["model"]
    if _baseline_differs(model, weights):
        weights = {k: v for k, v in weights.items() if not k.startswith("baseline.")}
        weights.update({k: v for k, v in model.state_dict().items() if k.startswith("baseline.")})
    detail = state_dict_mismatch(model, weights, p)
    if detail:
        raise InputError(f"--init-from {p}: its model has other sizes than this run's ({detail}); give the sizes "
                         "it was trained with, e.g. with --config and its run directory")
    check_finite(weights, p)
    return weights


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model a checkpoint holds (AIR or GridAIR), in eval mode."""
    return load_run(path, device)[0]


def check_finite(weights: dict[str, torch.Tensor], path) -> None:
    """Refuse weights that hold NaN or infinity, naming the tensors."""
    broken = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{path}: the weights hold NaN or infinite values ({', '.join(broken[:3])}"
                              f"{', ...' if len(broken) > 3 else ''}); the run diverged or the file was damaged: "
                              "use an earlier checkpoint (best.pt) or train again")


def state_dict_mismatch(model: torch.nn.Module, weights: dict[str, torch.Tensor], path) -> str:
    """How weights differ from the model's in names and shapes ("" where they fit); CheckpointError where they are
    no mapping of names to tensors at all."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a mapping of weight names to tensors")
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    return "; ".join(filter(None, [
        f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
        f"shape mismatch {shapes[:3]}" if shapes else ""]))


def check_state_dict(model: torch.nn.Module, weights: dict[str, torch.Tensor], path) -> None:
    """Refuse weights whose names or shapes do not match the model, with a message listing the differences."""
    detail = state_dict_mismatch(model, weights, path)
    if detail:
        raise CheckpointError(f"{path}: the weights do not fit the model its configuration describes ({detail})")


def training_state(trainer) -> dict:
    """Everything a run needs to continue exactly where it stopped (the contents of last.pt)."""
    return {"config": trainer.cfg.to_dict(), "model": trainer.model.state_dict(), "optimizer": trainer.opt.state_dict(),
            "step": trainer.step, "train_seconds": trainer.train_s, "best": dict(trainer.best),
            "skipped_steps": trainer.skipped_steps, "rollbacks": trainer.rollbacks, "lr_scale": trainer.lr_scale,
            "restarts": json.dumps(trainer.restarts), "first_look": json.dumps(trainer.first_look),
            "rng": {"torch": torch.get_rng_state(), "order": trainer.order_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "data_order": {"perm": trainer.perm, "pos": trainer.pos}}


def restore_training(trainer, path: str | Path) -> None:
    """Put a trainer back where the checkpoint at ``path`` left it; CheckpointError for anything that does not fit."""
    state = load_checkpoint(path, map_location="cpu")
    for key in ("optimizer", "step", "rng", "data_order"):
        if key not in state:
            raise CheckpointError(f"{path} cannot be resumed from: it has no '{key}'")
    saved = saved_config(state, path)
    if saved.model != trainer.cfg.model:
        raise CheckpointError(f"{path} was trained with another model configuration; resume without "
                              "changing model options (or start a new run directory)")
    check_state_dict(trainer.model, state["model"], path)
    check_finite(state["model"], path)  # never train on (and save as best) the weights of a diverged run
    try:
        step, seconds = training_progress(state, path)
        best, lr_scale = state["best"], float(state.get("lr_scale", 1.0))
        if not isinstance(best, dict) or not (math.isfinite(lr_scale) and lr_scale > 0) or \
                not isinstance(state["data_order"], dict):
            raise ValueError("best, lr_scale or data order out of range")
        trainer.model.load_state_dict(state["model"])
        trainer.opt.load_state_dict(state["optimizer"])
        trainer.step, trainer.train_s, trainer.best = step, seconds, best
        trainer.skipped_steps = int(state.get("skipped_steps", 0))
        trainer.rollbacks, trainer.lr_scale = int(state.get("rollbacks", 0)), lr_scale
        trainer.restarts = json.loads(state.get("restarts", "[]"))
        trainer.first_look = json.loads(state.get("first_look", "null"))
        torch.set_rng_state(state["rng"]["torch"])
        trainer.order_gen.set_state(state["rng"]["order"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        trainer.perm, trainer.pos = state["data_order"]["perm"], int(state["data_order"]["pos"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path} cannot be resumed from: its training state is damaged ({type(e).__name__}: "
                              f"{e}); evaluate best.pt, or start a new run in another --run-dir") from e
