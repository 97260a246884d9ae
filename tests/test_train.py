import json
import os
import signal

import pytest
import torch
from helpers import params, tiny_data, tiny_run

from attend_infer_repeat import AIR, CheckpointError
from attend_infer_repeat.checkpoint import load_checkpoint, save_checkpoint
from attend_infer_repeat.config import RunConfig
from attend_infer_repeat.train import Trainer


def interrupt_at(trainer, step):
    """Send the process a real SIGINT (Ctrl-C) during the given step."""
    real_step = trainer.train_step

    def step_then_interrupt(x):
        if trainer.step == step - 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(x)

    trainer.train_step = step_then_interrupt


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_continues_exactly(tiny_config, tmp_path, precision):
    """Interrupted at step 4 of 6 and resumed: the same weights as a run that never stopped (the learning
    rate schedule, data order and every random draw continue where they were)."""
    data = tiny_data()
    run = lambda: tiny_run(tiny_config, steps=6, precision=precision)  # noqa: E731
    full = Trainer(run(), tmp_path / "full", data=data, progress=False)
    full.fit()
    part = Trainer(run(), tmp_path / "part", data=data, progress=False)
    interrupt_at(part, 4)
    assert part.fit()["interrupted"]
    resumed = Trainer(run(), tmp_path / "part", data=data, progress=False)
    resumed.fit(resume=True)
    assert resumed.step == 6
    assert torch.equal(params(resumed.model), params(full.model))
    # the metrics file has each training step once, in order, and no torn lines
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_run_directory_contents_and_loading(tiny_config, tmp_path):
    summary = Trainer(tiny_run(tiny_config), tmp_path, data=tiny_data(), progress=False).fit()
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert summary["steps"] == 6 and 0 <= summary["held_out_count_acc"] <= 1
    cfg = RunConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert cfg.model == tiny_config
    state = load_checkpoint(tmp_path / "last.pt")
    assert {"model", "optimizer", "rng", "step", "config", "data_order"} <= set(state)
    for path in (tmp_path / "best.pt", tmp_path / "last.pt", tmp_path):
        model = AIR.load(path)
        assert model.config == tiny_config and not model.training


def test_short_training_improves_the_elbo(tiny_config, tmp_path):
    data = tiny_data(512, 128)
    tr = Trainer(tiny_run(tiny_config, steps=150, eval_every=1000, checkpoint_every=1000, batch_size=32),
                 tmp_path, data=data, progress=False)
    before = tr.evaluate()["elbo"]
    tr.fit()
    after = tr.evaluate()["elbo"]
    assert after > before + 20, (before, after)


def test_keyboard_interrupt_saves_and_resumes(tiny_config, tmp_path, monkeypatch):
    tr = Trainer(tiny_run(tiny_config, steps=50, checkpoint_every=1000), tmp_path, data=tiny_data(),
                 progress=False)
    interrupt_at(tr, 5)
    result = tr.fit()
    assert result["interrupted"] and load_checkpoint(tmp_path / "last.pt")["step"] == 5


def test_checkpoint_errors_are_clear(tiny_config, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        AIR.load(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        AIR.load(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an attend-infer-repeat checkpoint"):
        AIR.load(tmp_path / "other.pt")
    Trainer(tiny_run(tiny_config, steps=2), tmp_path / "run", data=tiny_data(), progress=False).fit()
    blob = (tmp_path / "run" / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        AIR.load(tmp_path / "cut.pt")
    # weights that do not fit the configuration
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    state["config"]["model"]["lstm_hidden"] = 32
    save_checkpoint(tmp_path / "mismatch.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    with pytest.raises(CheckpointError, match="do not fit"):
        AIR.load(tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(tiny_run(tiny_config), tmp_path / "empty", data=tiny_data(), progress=False).fit(resume=True)


def test_checkpoint_loading_runs_no_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"format": "attend-infer-repeat/checkpoint", "config": {}, "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        AIR.load(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c.pt", {"config": {}, "model": {"w": torch.ones(3)}})

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        save_checkpoint(tmp_path / "c.pt", {"config": {}, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


def test_non_finite_loss_skips_the_update_and_training_goes_on(tiny_config, tmp_path):
    tr = Trainer(tiny_run(tiny_config, steps=6), tmp_path, data=tiny_data(), progress=False)
    real_loss = tr.model.loss
    snapshot = {}

    def poisoned(x, step=0, **kw):
        out = real_loss(x, step, **kw)
        if step == 2:  # the third step's loss is NaN
            snapshot["before"] = params(tr.model).clone()
            out.loss = out.loss * float("nan")
        return out

    tr.model.loss = poisoned
    real_step = tr.train_step

    def step_and_check(x):
        out = real_step(x)
        if out.skipped:  # the weights are exactly as before the poisoned step
            assert torch.equal(params(tr.model), snapshot["before"])
        return out

    tr.train_step = step_and_check
    summary = tr.fit()
    assert summary["steps"] == 6 and summary["skipped_steps"] == 1
    assert torch.isfinite(params(tr.model)).all()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("skipped_steps", 0) for r in logged) == 1


def test_runs_of_nan_steps_roll_back_to_the_last_checkpoint_with_a_lower_rate(tiny_config, tmp_path, monkeypatch):
    import attend_infer_repeat.train as train_module

    monkeypatch.setattr(train_module, "MAX_CONSECUTIVE_SKIPS", 3)
    tr = Trainer(tiny_run(tiny_config, steps=20, checkpoint_every=5), tmp_path, data=tiny_data(), progress=False)
    real_loss = tr.model.loss

    def nan_for_a_while(x, step=0, **kw):
        out = real_loss(x, step, **kw)
        if 7 <= step < 10:  # three non-finite steps in a row, after the checkpoint of step 5
            out.loss = out.loss * float("nan")
        return out

    tr.model.loss = nan_for_a_while
    summary = tr.fit()
    assert summary["steps"] == 20 and summary["rollbacks"] == 1 and summary["skipped_steps"] == 3
    assert tr.lr_scale == 0.5 and torch.isfinite(params(tr.model)).all()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "rollback"]
    assert len(events) == 1 and events[0]["to_step"] == 5 and events[0]["lr_scale"] == 0.5
    assert load_checkpoint(tmp_path / "last.pt")["lr_scale"] == 0.5  # a resumed run keeps the lower rate


def test_a_diverged_run_stops_with_a_clear_error(tiny_config, tmp_path):
    from attend_infer_repeat.errors import AIRError

    tr = Trainer(tiny_run(tiny_config, steps=100), tmp_path, data=tiny_data(), progress=False)
    real_loss = tr.model.loss

    def always_nan(x, step=0, **kw):
        out = real_loss(x, step, **kw)
        out.loss = out.loss * float("nan")
        return out

    tr.model.loss = always_nan
    with pytest.raises(AIRError, match="diverged"):
        tr.fit()


def test_fp16_with_loss_scaling_trains(tiny_config, tmp_path):
    """fp16 autocast (for GPUs without bf16) with dynamic loss scaling; runs on the CPU too."""
    tr = Trainer(tiny_run(tiny_config, steps=30, precision="fp16", eval_every=1000), tmp_path, data=tiny_data(),
                 progress=False)
    assert tr.scaler is not None
    before = tr.evaluate()["elbo"]
    summary = tr.fit()
    assert summary["precision"] == "fp16" and torch.isfinite(params(tr.model)).all()
    assert tr.evaluate()["elbo"] > before


def test_unwritable_run_directory_is_a_clear_error(tiny_config, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run directory should be")
    with pytest.raises(CheckpointError, match="cannot create the run directory"):
        Trainer(tiny_run(tiny_config), blocker / "run", data=tiny_data(), progress=False).fit()
    assert blocker.read_text() == "a file where the run directory should be"


def test_a_skipped_step_still_counts_towards_the_training_clock(tiny_config, tmp_path):
    """The --minutes budget is training time: a slow step that ends non-finite must count too."""
    import time as _time

    tr = Trainer(tiny_run(tiny_config, steps=4), tmp_path, data=tiny_data(), progress=False)
    real_loss = tr.model.loss

    def slow_nan(x, step=0, **kw):
        out = real_loss(x, step, **kw)
        if step == 1:
            _time.sleep(0.3)
            out.loss = out.loss * float("nan")
        return out

    tr.model.loss = slow_nan
    tr.fit()
    assert tr.skipped_steps == 1 and tr.train_s >= 0.3


def test_a_new_run_refuses_a_folder_that_holds_a_run(tiny_config, tmp_path):
    """Starting afresh in a run directory would mix two runs' curves in metrics.jsonl and overwrite the first
    run's checkpoints: it is refused with a message that says what to do, and nothing is touched."""
    from attend_infer_repeat import InputError

    cfg = tiny_run(tiny_config, steps=2)
    Trainer(cfg, tmp_path, data=tiny_data(), progress=False, tensorboard=False).fit()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(InputError, match="already holds a run.*--resume"):
        Trainer(cfg, tmp_path, data=tiny_data(), progress=False, tensorboard=False).fit()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing but empty folder is fine
    Trainer(cfg, empty, data=tiny_data(), progress=False, tensorboard=False).fit()


_FAULTS_SCRIPT = r"""
import resource, sys, torch
from attend_infer_repeat.config import ModelConfig, RunConfig, TrainConfig
from attend_infer_repeat.train import Data, Trainer
if sys.argv[1] == "trainer":  # a CPU trainer applies reuse_freed_memory itself
    imgs = torch.zeros(8, 50, 50, dtype=torch.uint8)
    Trainer(RunConfig(model=ModelConfig(), train=TrainConfig(device="cpu", steps=1)), sys.argv[2],
            data=Data(imgs, None, imgs, None), progress=False, tensorboard=False)
w = torch.randn(1024, 2500)
def step():  # what a training step does with the image-projection weights: 5-10 MB buffers made and freed
    bufs = [w.to(torch.bfloat16) for _ in range(4)] + [w * 2 for _ in range(4)]
    del bufs
for _ in range(3):
    step()
per_step = []
for _ in range(11):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    per_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(sorted(per_step)[5])  # the median step: robust to a stray fault burst from elsewhere in the system
"""


@pytest.mark.skipif(not (os.uname().sysname == "Linux" and __import__("platform").libc_ver()[0] == "glibc"),
                    reason="the allocator setting applies to Linux with glibc only")
def test_a_cpu_trainer_keeps_large_freed_blocks_instead_of_faulting_them_in_again(tmp_path):
    """Every training step makes and frees the same 5-10 MB buffers. With glibc's defaults most processes
    unmap them and fault ~15,000 fresh pages in again on every step (how often depends on the address-space
    layout, so that side is not asserted); a CPU Trainer makes glibc keep them: no page faults per step."""
    import subprocess
    import sys

    for attempt in range(2):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, "trainer", str(tmp_path / f"run{attempt}")],
                             capture_output=True, text=True, check=True)
        assert float(out.stdout.split()[-1]) <= 10


def test_all_finite_catches_every_kind_of_non_finite_value():
    from attend_infer_repeat.run_setup import all_finite

    ok = [torch.randn(50, 40), torch.randn(7), torch.randn(3).bfloat16()]
    assert all_finite(ok) and all_finite([])
    for bad in (float("nan"), float("inf"), float("-inf")):
        for i in range(3):
            tensors = [t.clone() for t in ok]
            tensors[i].view(-1)[-1] = bad
            assert not all_finite(tensors)
    # +inf in one tensor and -inf in another must not cancel out
    assert not all_finite([torch.tensor([float("inf")]), torch.tensor([float("-inf")])])


def test_a_non_finite_gradient_with_a_finite_loss_skips_the_update(tiny_config, tmp_path):
    """The loss can be finite while backward makes an inf (0 * inf, a log at 0): the weights must not see it."""
    tr = Trainer(tiny_run(tiny_config, steps=4), tmp_path, data=tiny_data(), progress=False)
    weight = tr.model.lstm.image_proj.weight  # the largest tensor, checked by the same rule as every other
    poison = {"on": False}
    weight.register_hook(lambda g: g.index_fill(0, torch.tensor([0]), float("inf")) if poison["on"] else g)
    real_step = tr.train_step

    def step(x):
        poison["on"] = tr.step == 1
        before = params(tr.model).clone()
        out = real_step(x)
        assert torch.isfinite(out.loss)
        assert out.skipped == poison["on"]
        if out.skipped:
            assert torch.equal(params(tr.model), before)
        return out

    tr.train_step = step
    summary = tr.fit()
    assert summary["skipped_steps"] == 1 and torch.isfinite(params(tr.model)).all()


def _trap_at_first_check(trainer, falling: bool = False, name: str = "split_objects"):
    """The trap check reports a trap at every look of the trainer's first attempt, nothing after (the check itself
    is tested on models in each trap in test_diagnose.py; here only what the trainer does with its answer). The
    trap's mark stays at 60% of the images, or with ``falling`` falls as 1 / step (60% at the first look)."""
    real = trainer.check_traps
    calls = []

    def check():
        calls.append(trainer.step)
        found = real()
        if not trainer.restarts:
            rate = 0.6 * trainer.trap_check_steps()[0] / trainer.step if falling else 0.6
            found["traps"] = [{"name": name, "rate": rate, "threshold": 0.35, "message": "made up"}]
            found["rates"] = {**found["rates"], name: rate}
        return found

    trainer.check_traps = check
    return calls


def _fit_with_trap(tiny_config, tmp_path, falling: bool = False, **train):
    """A tiny run whose trap check reports a trap in its first attempt (``_trap_at_first_check``): the steps the
    check ran at, and the run's summary."""
    tr = Trainer(tiny_run(tiny_config, **train), tmp_path, data=tiny_data(), progress=False)
    calls = _trap_at_first_check(tr, falling)
    return calls, tr.fit()


def test_a_trap_found_early_starts_the_run_again_from_new_weights(tiny_config, tmp_path, capsys):
    data = tiny_data()
    cfg = tiny_run(tiny_config, steps=12, eval_every=3, restarts=1)
    plain = Trainer(tiny_run(tiny_config, steps=12, eval_every=3, restarts=0), tmp_path / "plain", data=data,
                    progress=False)
    plain.fit()
    tr = Trainer(cfg, tmp_path / "run", data=data, progress=False)
    calls = _trap_at_first_check(tr)
    summary = tr.fit()
    assert calls[:2] == [2, 4]  # looks at a sixth and a third of the 12 steps: the trap stayed ...
    assert summary["steps"] == 12 and len(summary["restarts"]) == 1  # ... and a full budget follows it
    assert summary["restarts"][0]["step"] == 4 and summary["restarts"][0]["traps"][0]["name"] == "split_objects"
    assert "starting again from new initial weights (attempt 2 of at most 2)" in capsys.readouterr().err
    assert not torch.equal(params(tr.model), params(plain.model))  # other initial weights
    old = [json.loads(line) for line in (tmp_path / "run" / "attempt-1.metrics.jsonl").read_text().splitlines()]
    new = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in old) == 4 and new[0]["kind"] == "restart"
    steps = [r["step"] for r in new if r["kind"] == "train"]
    assert steps == sorted(steps) and steps[-1] == 12
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["restarts"] == summary["restarts"] and "traps" in saved and "trap_rates" in saved
    # deterministic: the same run again gives the same weights; and no more restarts than allowed
    again = Trainer(cfg, tmp_path / "again", data=data, progress=False)
    _trap_at_first_check(again)
    again.fit()
    assert torch.equal(params(again.model), params(tr.model))


def test_a_restarted_run_resumes_exactly(tiny_config, tmp_path):
    data = tiny_data()
    cfg = tiny_run(tiny_config, steps=12, eval_every=3, restarts=1)
    full = Trainer(cfg, tmp_path / "full", data=data, progress=False)
    _trap_at_first_check(full)
    full.fit()
    part = Trainer(cfg, tmp_path / "part", data=data, progress=False)
    _trap_at_first_check(part)
    interrupt_at(part, 8)
    assert part.fit()["interrupted"]
    resumed = Trainer(cfg, tmp_path / "part", data=data, progress=False)
    summary = resumed.fit(resume=True)
    assert len(summary["restarts"]) == 1 and summary["steps"] == 12
    assert torch.equal(params(resumed.model), params(full.model))


def test_the_early_check_does_not_wait_for_an_evaluation(tiny_config, tmp_path):
    # a budget that is no multiple of the evaluation interval (3,000 steps evaluated every 1,000 used to go
    # unchecked until the end): the looks come at a sixth and a third of this short budget all the same
    calls, summary = _fit_with_trap(tiny_config, tmp_path, steps=25, eval_every=7, restarts=1)
    assert calls == [5, 9, 25]  # 25 / 3 rounded up and half that (a trap: the one restart allowed), the final check
    assert [r["step"] for r in summary["restarts"]] == [9] and summary["steps"] == 25


def test_a_trap_mark_that_falls_between_the_looks_is_a_model_still_learning(tiny_config, tmp_path):
    calls, summary = _fit_with_trap(tiny_config, tmp_path, falling=True, steps=12, eval_every=3, restarts=2)
    assert summary["restarts"] == [] and calls == [2, 4, 12]  # 60% then 30%: no restart
    assert [t["name"] for t in summary["traps"]] == ["split_objects"]  # ... but the final check still warns


def test_the_first_look_survives_an_interruption(tiny_config, tmp_path):
    cfg = tiny_run(tiny_config, steps=12, eval_every=3, checkpoint_every=1, restarts=1)
    full = Trainer(cfg, tmp_path / "full", data=tiny_data(), progress=False)
    _trap_at_first_check(full, falling=True)
    full.fit()
    part = Trainer(cfg, tmp_path / "part", data=tiny_data(), progress=False)
    _trap_at_first_check(part, falling=True)
    interrupt_at(part, 3)  # after the first look
    assert part.fit()["interrupted"]
    resumed = Trainer(cfg, tmp_path / "part", data=tiny_data(), progress=False)
    calls = _trap_at_first_check(resumed, falling=True)
    summary = resumed.fit(resume=True)
    # its first call is the second look (30%): compared with the saved first look (60%), not with no look at all
    assert calls[0] == 4 and summary["restarts"] == []
    assert torch.equal(params(resumed.model), params(full.model))


def test_no_early_check_without_restarts_left(tiny_config, tmp_path):
    calls, summary = _fit_with_trap(tiny_config, tmp_path, steps=12, eval_every=3, restarts=0)
    assert summary["restarts"] == [] and calls == [12]  # only the final check ran


def test_progress_is_tqdm_on_a_terminal_and_plain_lines_elsewhere():
    import io

    from attend_infer_repeat.runlog import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stats = {"elbo": 512.5, "train_acc": 0.9, "ips": 1234, "eval_acc": 0.95}
    for stream, tty in ((Terminal(), True), (io.StringIO(), False)):
        bar = Progress(100, None, stream=stream)
        assert (bar.bar is not None) == tty
        for step in (10, 100):
            bar.update(step, step * 0.1, stats)
        bar.close()
        text = stream.getvalue()
        assert "step 100/100" in text and "512.5" in text and "held-out 0.950" in text and "1234 img/s" in text
        assert ("100%|" in text and "\r" in text) if tty else (text.count("\n") == 2 and "\r" not in text)


@pytest.mark.parametrize("name,restarts", [("split_objects", 0), ("constant_count", 1)])
def test_the_grid_model_starts_again_only_when_it_explains_nothing(tiny_config, tmp_path, name, restarts):
    """Its cells share and split digits while they learn, so those marks do not restart it; an empty grid does."""
    import dataclasses

    grid = dataclasses.replace(tiny_config, architecture="grid", grid_size=2, max_steps=4)
    tr = Trainer(tiny_run(grid, steps=12, eval_every=6, restarts=1), tmp_path, data=tiny_data(), progress=False)
    calls = _trap_at_first_check(tr, name=name)
    summary = tr.fit()
    assert calls[:2] == [2, 4] and len(summary["restarts"]) == restarts and summary["steps"] == 12
