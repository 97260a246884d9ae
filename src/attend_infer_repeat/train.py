"""``air train``: one readable training loop in plain PyTorch.

The whole data set lives in memory as one uint8 tensor; each step draws a batch from a seeded permutation,
computes the ELBO surrogate (``AIR.loss``) and takes one Adam step for the model and guide and one, on its
own learning rate, for the NVIL baseline. Held-out count accuracy and ELBO are measured every ``eval_every``
steps on scenes built from MNIST *test* digits. Everything needed to continue exactly (weights, optimiser,
RNG states, data order, step, clock) is checkpointed atomically; ``--resume`` picks it up again.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from .checkpoint import (
    atomic_write_bytes,
    initial_weights,
    load_checkpoint,
    restore_training,
    save_checkpoint,
    training_state,
)
from .config import RunConfig
from .diagnose import check_traps, early_look_steps, staying_traps
from .errors import AIRError, CheckpointError, InputError
from .evaluate import as_float_batch, evaluate_counts, seeded
from .model import build_model
from .run_setup import Data, _rank_key, all_finite, attempt_seed, load_data, make_optimizer, prepare_run_dir
from .runlog import MetricsLog, Progress
from .runtime import (
    LossModule,
    all_agree,
    catch_ctrl_c,
    cxx_compiler_found,
    init_distributed,
    leave_group,
    peak_rss_gib,
    pick_device,
    rank_seed,
    resolve_precision,
    reuse_freed_memory,
)

MAX_CONSECUTIVE_SKIPS = 20  # this many non-finite steps in a row: roll back to the last good checkpoint
MAX_ROLLBACKS = 3  # ... at most this many times, then stop with a clear error


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train a model with ``cfg`` into ``run_dir`` (or continue it with ``resume``); returns the summary."""
    return Trainer(cfg, run_dir, progress=progress).fit(resume=resume)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str | Path, data: Data | None = None, progress: bool = True,
                 tensorboard: bool = True, on_eval=None):
        """``on_eval(model, step)``, if given, is called after every periodic held-out evaluation (the
        experiments draw their learning curves with it)."""
        self.on_eval = on_eval
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = pick_device(t.device)
        self.world, self.rank, self._joined_group = init_distributed(self.device.type)
        self.is_main = self.rank == 0  # only the first process writes metrics, checkpoints and the report
        if self.world > 1:
            if t.batch_size % self.world:
                raise InputError(f"--batch-size {t.batch_size} (the global batch) must divide evenly among "
                                 f"{self.world} processes")
            if t.minutes:
                raise InputError("with several processes give the budget in --steps, not --minutes")
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        self.precision = resolve_precision(t.precision, self.device)
        if self.device.type == "cpu":
            reuse_freed_memory()
        torch.manual_seed(t.seed)  # the same initial weights in every process
        self.model = build_model(cfg.model).to(self.device)
        if t.init_from:  # go on from a trained model: the same weights in every process
            self.model.load_state_dict(initial_weights(t.init_from, self.model))
        self.opt = make_optimizer(self.model, cfg)
        # fp16 needs dynamic loss scaling so that small gradients do not underflow (bf16 and fp32 do not)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(LossModule(self.model))
            torch.manual_seed(rank_seed(t.seed, self.rank))  # each process samples its own latents
        self.data = data if data is not None else load_data(cfg)
        if self.is_main and data is None and t.dataset == "files":
            d = self.data
            print(f"air train: {len(d.train_images)} of your images to train on, {len(d.test_images)} held out"
                  + (" (scene file: counts known, held-out count accuracy reported)" if d.test_counts is not None
                     else "; they have no counts, so the held-out evaluation reports the ELBO only, no count "
                     "accuracy"), file=sys.stderr)
        self.order_gen = torch.Generator().manual_seed(t.seed + 1)
        self.perm = torch.randperm(len(self.data.train_images), generator=self.order_gen)
        self.pos = 0
        self.step = 0
        self.skipped_steps = 0  # updates skipped for a non-finite loss or gradient
        self.consecutive_skips = 0
        self.rollbacks = 0  # returns to the last good checkpoint after runs of non-finite steps
        self.restarts: list[dict] = []  # attempts given up because the trap check found a trap in them
        self.first_look: dict[str, float] | None = None  # the marks at the first early look
        self.lr_scale = 1.0  # halved by each rollback
        self.events: list[dict] = []  # rollbacks, written to metrics.jsonl by the loop
        self.train_s = 0.0
        self.best = {"count_acc": -1.0, "elbo": -float("inf"), "step": 0}
        self.progress = progress
        self.tensorboard = tensorboard
        self.compiled_loss = self._compile_loss()  # None: the loss runs eagerly
        self.compile_seconds: float | None = None  # how long the first compiled step (compiling it) took

    # ------------------------------------------------------------------------------------------- the loop
    def fit(self, resume: bool = False) -> dict:
        t = self.cfg.train
        prepare_run_dir(self.run_dir, resume, self.is_main)
        log = MetricsLog(self.run_dir, self.tensorboard and self.is_main, enabled=self.is_main)
        if resume:
            last = self.run_dir / "last.pt"
            if not last.exists():
                raise CheckpointError(f"--resume: {last} does not exist; start a new run without --resume")
            self.restore(last)
            if self.world > 1:  # every process restored rank 0's RNG: give each its own stream again
                torch.manual_seed(rank_seed(t.seed, self.rank) + self.step)
            if self.is_main:
                log.truncate_after(self.step)
        config_text = json.dumps(self.cfg.to_dict(), indent=2)
        if self.is_main:
            atomic_write_bytes(self.run_dir / "config.json", lambda f: f.write(config_text.encode()))

        if self.compiled_loss is not None and self.compile_seconds is None and self.is_main and self.progress:
            print("air train: compiling the training step (torch.compile: about 40 s the first time on this "
                  "machine, seconds after that; --compile off skips it)", file=sys.stderr)
        bar = Progress(t.steps, t.minutes, enabled=self.progress and self.is_main)
        budget_s = 60 * t.minutes if t.minutes else float("inf")
        window = {"elbo": 0.0, "acc": 0.0, "n": 0, "t": 0.0, "imgs": 0}
        stats: dict[str, float] = {}
        interrupted = False
        self.stop_requested = False
        previous_handler = catch_ctrl_c(self)
        try:
            while self.step < t.steps and self.train_s < budget_s and not self.all_agree(self.stop_requested):
                t0 = time.perf_counter()
                idx = self.next_batch()[self.rank::self.world]  # this process's share of the global batch
                x = as_float_batch(self.data.train_images[idx]).to(self.device, non_blocking=True)
                out = self.train_step(x)
                while self.events:
                    log.write(self.events.pop(0))
                if out.skipped:  # its time still counts: the budget is wall-clock training time
                    self.train_s += time.perf_counter() - t0
                    print(f"\nstep {self.step}: non-finite loss or gradient, update skipped "
                          f"({self.skipped_steps} so far)", file=sys.stderr)
                    continue
                elbo = float(out.elbo.mean())
                acc = float((out.counts.cpu() == self.data.train_counts[idx]).float().mean()) \
                    if self.data.train_counts is not None else float("nan")
                dt = time.perf_counter() - t0
                self.train_s += dt
                window["elbo"] += elbo
                window["acc"] += acc
                window["n"] += 1
                window["t"] += dt
                window["imgs"] += x.size(0) * self.world  # the global batch
                if self.step % t.log_every == 0 or self.step == t.steps:
                    stats.update(elbo=window["elbo"] / window["n"], train_acc=window["acc"] / window["n"],
                                 ips=window["imgs"] / max(window["t"], 1e-9))
                    log.write({"kind": "train", "step": self.step, "train_seconds": round(self.train_s, 2),
                               "elbo": stats["elbo"],
                               "count_acc": None if math.isnan(stats["train_acc"]) else stats["train_acc"],
                               "images_per_s": stats["ips"], "skipped_steps": self.skipped_steps,
                               **{k: float(v) for k, v in out.terms.items()}})
                    window = {"elbo": 0.0, "acc": 0.0, "n": 0, "t": 0.0, "imgs": 0}
                    bar.update(self.step, self.train_s, stats)
                if self.step % t.eval_every == 0 and self.is_main:
                    ev = self.evaluate(t.eval_size)
                    if self.on_eval is not None:
                        self.on_eval(self.model, self.step)
                    stats["eval_acc"] = ev["count_acc"]
                    log.write({"kind": "eval", "step": self.step, "train_seconds": round(self.train_s, 2),
                               "count_acc": ev["count_acc"], "elbo": ev["elbo"], "n": ev["n"]})
                    if _rank_key(ev) > _rank_key(self.best):
                        self.best = {"count_acc": ev["count_acc"], "elbo": ev["elbo"], "step": self.step}
                        self.save("best.pt")
                if self.step in self.trap_check_steps() and self.can_restart():
                    found = self.early_trap_check() if self.is_main else []
                    if self.all_agree(bool(found)):
                        self.restart(found)
                        continue
                if self.step % t.checkpoint_every == 0:
                    self.save("last.pt")
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the main thread's handler
            interrupted = True
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        interrupted = interrupted or self.stop_requested
        self.save("last.pt")
        self.leave_group()  # no collective follows: the first process evaluates alone
        if interrupted:
            log.close()
            print(f"interrupted at step {self.step}: saved {self.run_dir / 'last.pt'}; continue with --resume",
                  file=sys.stderr)
            return {"interrupted": True, "step": self.step, "run_dir": str(self.run_dir)}
        if not self.is_main:  # the first process evaluates and writes the summary
            log.close()
            return {"rank": self.rank, "steps": self.step, "run_dir": str(self.run_dir)}

        final = self.evaluate()  # the whole held-out set
        traps = self.check_traps()
        for trap in traps["traps"]:
            print(f"air train: WARNING: trap '{trap['name']}': {trap['message']}", file=sys.stderr)
        if _rank_key(final) >= _rank_key(self.best) or \
                not (self.run_dir / "best.pt").exists():
            self.best = {"count_acc": final["count_acc"], "elbo": final["elbo"], "step": self.step}
            self.save("best.pt")
        log.write({"kind": "final", "step": self.step, "train_seconds": round(self.train_s, 2),
                   "count_acc": final["count_acc"], "elbo": final["elbo"], "n": final["n"]})
        log.close()
        summary = {"run_dir": str(self.run_dir), "steps": self.step, "train_minutes": round(self.train_s / 60, 2),
                   "images_per_s": round(self.step * t.batch_size / max(self.train_s, 1e-9), 1),
                   "processes": self.world,
                   "held_out_count_acc": final["count_acc"], "held_out_elbo": round(final["elbo"], 2),
                   "held_out_n": final["n"], "best": self.best, "device": str(self.device),
                   "precision": self.precision, "compiled": self.compiled_loss is not None,
                   "compile_seconds": None if self.compile_seconds is None else round(self.compile_seconds, 2),
                   "skipped_steps": self.skipped_steps, "rollbacks": self.rollbacks,
                   "traps": traps["traps"], "trap_rates": traps["rates"], "restarts": self.restarts,
                   "peak_rss_gib": round(peak_rss_gib(), 2)}
        text = json.dumps(summary, indent=2)
        atomic_write_bytes(self.run_dir / "summary.json", lambda f: f.write(text.encode()))
        return summary

    # ------------------------------------------------------------------------------------------- batches
    def next_batch(self) -> torch.Tensor:
        bs = self.cfg.train.batch_size
        if self.pos + bs > len(self.perm):
            self.perm = torch.randperm(len(self.data.train_images), generator=self.order_gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + bs]
        self.pos += bs
        return idx

    # ---------------------------------------------------------------------------------------- checkpoint
    def state(self) -> dict:
        return training_state(self)

    def save(self, name: str) -> Path:
        path = self.run_dir / name
        if self.is_main:
            save_checkpoint(path, self.state())
        return path

    def leave_group(self) -> None:
        """The end of a distributed run (see runtime.leave_group)."""
        if self.ddp is None:
            return
        self.ddp = None
        self._joined_group = leave_group(self._joined_group)

    def all_agree(self, flag: bool, op: str = "max") -> bool:
        """Combine a yes/no across processes (max: anyone says yes; min: everyone says yes)."""
        return flag if self.world == 1 else all_agree(flag, self.device, op)

    def restore(self, path: str | Path) -> None:
        restore_training(self, path)

    # ------------------------------------------------------------------------------------------- one step
    def autocast(self):
        """bf16/fp16 autocast of the matrix products when asked for (the ELBO's sums stay in fp32)."""
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.precision in ("bf16", "fp16"))

    def budget_fraction(self) -> float:
        """How much of the budget (steps or minutes, whichever is nearer its end) is used."""
        t = self.cfg.train
        frac = self.step / t.steps
        if t.minutes:
            frac = max(frac, self.train_s / (60 * t.minutes))
        return min(frac, 1.0)

    def learning_rate_factor(self) -> float:
        t = self.cfg.train
        if t.lr_schedule == "constant":
            return 1.0
        return t.lr_final_fraction + (1 - t.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * self.budget_fraction()))

    def roll_back(self) -> None:
        """Non-finite steps keep coming: go back to the weights and optimiser of the last good checkpoint and
        halve the learning rates (the step count, data order and budget go on). After MAX_ROLLBACKS, stop."""
        last = self.run_dir / "last.pt"
        if self.rollbacks >= MAX_ROLLBACKS or not last.exists():
            raise AIRError(f"training diverged: {self.consecutive_skips} steps in a row had a non-finite loss or "
                           f"gradient (step {self.step}, after {self.rollbacks} rollbacks); the weights were not "
                           "touched by them. Start again with a lower --lr")
        state = load_checkpoint(last, map_location="cpu")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.rollbacks += 1
        self.lr_scale *= 0.5
        self.consecutive_skips = 0
        message = (f"step {self.step}: {MAX_CONSECUTIVE_SKIPS} non-finite steps in a row; rolled back to the "
                   f"weights of step {state['step']} with learning rates x{self.lr_scale:g}")
        print("\n" + message, file=sys.stderr)
        self.events.append({"kind": "rollback", "step": self.step, "to_step": state["step"],
                            "lr_scale": self.lr_scale, "message": message})

    def _compile_loss(self):
        """``torch.compile`` of ``AIR.loss`` where ``cfg.train.compile`` asks for it (see TrainConfig.compile).

        The loss is compiled, not the optimiser step (fused Adam is one kernel already) nor the model (its
        state dict keeps its names). ``dynamic=False``: every training batch has the same shape."""
        mode = self.cfg.train.compile
        if mode == "off" or (mode == "auto" and (self.device.type != "cpu" or self.world > 1)):
            return None
        if mode == "auto" and not cxx_compiler_found():  # TorchInductor's CPU code needs one: don't try in vain
            if self.progress and self.is_main:
                print("air train: --compile auto, but no C++ compiler found (g++, clang++, c++ or $CXX), so the "
                      "training step runs eagerly", file=sys.stderr)
            return None
        if self.world > 1:
            raise InputError("--compile on works in one process only: with several processes use --compile auto "
                             "(which trains them eagerly) or off")
        return torch.compile(self.model.loss, dynamic=False, options={"fallback_random": True})

    def loss(self, x: torch.Tensor):
        """``AIR.loss`` of a training batch at this step: compiled where that is on and works, else eager.

        The first compiled call compiles. If that fails (typically: no working C++ compiler for TorchInductor),
        ``compile auto`` warns once and trains eagerly from then on; ``compile on`` stops with the reason."""
        prior = self.model.prior(self.step)  # a tensor, so the compiled loss never sees the step number change
        if self.compiled_loss is not None:
            if self.compile_seconds is not None:
                return self.compiled_loss(x, z_pres_prior=prior)
            try:
                out = self.compiled_loss(x, z_pres_prior=prior)
            except Exception as e:  # any compiler failure: the eager loss below is the fallback
                self.compiled_loss = None
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
                if self.cfg.train.compile == "on":
                    raise AIRError(f"--compile on: torch.compile failed ({reason}). Install a C++ compiler "
                                   "(g++ or clang) for TorchInductor, or train with --compile off") from e
                print(f"air train: torch.compile failed ({reason}); training without it (eager, slower). "
                      "--compile off skips the attempt", file=sys.stderr)
            else:
                return out
        return self.model.loss(x, self.step, z_pres_prior=prior)

    def gradients(self) -> list[torch.Tensor]:
        """The gradients the optimiser is about to apply (those of every parameter that has one)."""
        return [p.grad for g in self.opt.param_groups for p in g["params"] if p.grad is not None]

    def train_step(self, x: torch.Tensor):
        compiling = self.compiled_loss is not None and self.compile_seconds is None
        t0 = time.perf_counter()
        factor = self.learning_rate_factor()
        for g in self.opt.param_groups:  # the schedule applies to model and guide; the baseline keeps its rate
            if g["name"] == "model":
                g["lr"] = self.cfg.train.lr * factor * self.lr_scale
            else:
                g["lr"] = self.cfg.train.baseline_lr * self.lr_scale
        with self.autocast():
            if self.ddp is not None:
                total = self.ddp(x, self.step)
                out = self.ddp.module.last
            else:
                out = self.loss(x)
                total = out.loss + out.baseline_loss
        self.opt.zero_grad(set_to_none=True)
        # every process must agree before backward (DDP's gradient averaging needs all of them)
        out.skipped = not self.all_agree(bool(torch.isfinite(total)), "min")
        if not out.skipped:
            (self.scaler.scale(total) if self.scaler else total).backward()
            if self.scaler:
                self.scaler.unscale_(self.opt)
            out.skipped = not all_finite(self.gradients())
            if out.skipped and self.scaler:  # an fp16 overflow: lower the scale, as loss scaling does
                self.scaler.update(self.scaler.get_scale() / 2)
        if out.skipped:  # a non-finite loss or gradient never reaches the weights: skip the update, count it
            self.opt.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.consecutive_skips += 1
            if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                self.roll_back()
        else:
            self.consecutive_skips = 0
            if self.cfg.train.grad_clip:
                params = [p for g in self.opt.param_groups if g["name"] == "model" for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
            if self.scaler:
                self.scaler.step(self.opt)  # gradients are unscaled already; this also tracks overflows
                self.scaler.update()
            else:
                self.opt.step()
        if compiling and self.compiled_loss is not None:  # the first compiled step: forward and backward compiled
            self.compile_seconds = time.perf_counter() - t0
        self.step += 1
        return out

    def evaluate(self, n: int | None = None) -> dict[str, float]:
        d = self.data
        n = len(d.test_images) if n is None else min(n, len(d.test_images))
        # evaluation samples too (the ELBO): keep it off the training RNG so that how often one evaluates
        # never changes the training run, and a resumed run stays identical to an uninterrupted one
        counts = d.test_counts[:n] if d.test_counts is not None else None
        with seeded(self.cfg.train.seed + 2, self.device):
            return evaluate_counts(self.model, d.test_images[:n], counts, train_step=self.step)

    def check_traps(self) -> dict:
        """The trap check (diagnose.check_traps, no labels) on the first ``eval_size`` held-out images."""
        images = self.data.test_images[:self.cfg.train.eval_size]
        with seeded(self.cfg.train.seed + 3, self.device):
            return check_traps(self.model, images)

    def can_restart(self) -> bool:
        """Attempts left and new weights to start from (not --init-from); which traps start each model again:
        diagnose.staying_traps (the grid model only for an empty grid)."""
        t = self.cfg.train
        return len(self.restarts) < t.restarts and not t.init_from

    def trap_check_steps(self) -> tuple[int, ...]:  # this attempt's two early looks
        return early_look_steps(self.cfg.train.steps)

    def early_trap_check(self) -> list[dict]:
        """One early look: at the first, note the marks (no trap yet); at the second, the traps that stayed."""
        if self.step != self.trap_check_steps()[0]:
            return staying_traps(self.check_traps(), self.first_look, self.cfg.model.architecture)
        self.first_look = dict(self.check_traps()["rates"])
        return []

    def restart(self, found: list[dict]) -> None:
        """Give up this attempt (its trap check found ``found``) and start again from new initial weights.

        The step count, optimiser, schedule and best checkpoint start afresh; the clock and the data order go on.
        The attempt's metrics are kept as ``attempt-K.metrics.jsonl`` beside the new ones."""
        t = self.cfg.train
        self.restarts.append({"step": self.step, "traps": found})
        k = len(self.restarts)
        torch.manual_seed(attempt_seed(t.seed, k))  # the same new weights in every process
        fresh = build_model(self.cfg.model).to(self.device)
        self.model.load_state_dict(fresh.state_dict())  # in place: a compiled loss stays valid
        self.opt = make_optimizer(self.model, self.cfg)
        if self.world > 1:
            torch.manual_seed(rank_seed(attempt_seed(t.seed, k), self.rank))
        self.step, self.lr_scale, self.consecutive_skips = 0, 1.0, 0
        self.first_look = None
        self.best = {"count_acc": -1.0, "elbo": -float("inf"), "step": 0}
        names = ", ".join(f["name"] for f in found)
        message = (f"the trap check after step {self.restarts[-1]['step']} found {names}; starting again from new "
                   f"initial weights (attempt {k + 1} of at most {t.restarts + 1})")
        if self.is_main:
            for name in ("best.pt", "last.pt"):
                (self.run_dir / name).unlink(missing_ok=True)
            metrics = self.run_dir / "metrics.jsonl"
            if metrics.exists():
                metrics.replace(self.run_dir / f"attempt-{k}.metrics.jsonl")
            print(f"\nair train: {message}", file=sys.stderr)
        self.events.append({"kind": "restart", "step": 0, "attempt": k + 1, "message": message, "traps": found})


__all__ = ["Trainer", "train"]
