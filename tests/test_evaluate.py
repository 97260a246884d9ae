"""Metric correctness on hand-made cases, the exact assignment, and the importance-weighted bound."""
import itertools

import numpy as np
import pytest
import torch
from helpers import blob_images

from attend_infer_repeat.evaluate import (
    box_iou,
    confusion_matrix,
    evaluate,
    evaluate_counts,
    format_table,
    importance_log_px,
    linear_assignment,
    localisation_metrics,
    match_boxes,
)
from attend_infer_repeat.model import AIR


def test_iou_of_identical_shifted_and_disjoint_boxes():
    a = np.array([[0, 0, 10, 10]])
    assert box_iou(a, a)[0, 0] == pytest.approx(1.0)
    # shifted right by 5: overlap 5x10 = 50, union 150
    assert box_iou(a, [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    assert box_iou(a, [[20, 20, 30, 30]])[0, 0] == 0.0
    assert box_iou(np.zeros((0, 4)), a).shape == (0, 1)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 5), (5, 2), (4, 4)])
def test_linear_assignment_is_exact(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        cost = rng.random(shape)
        rows, cols = linear_assignment(cost)
        assert len(rows) == min(shape) and len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
        r, c = shape
        best = min(sum(cost[i, j] for i, j in zip(perm_r, perm_c))
                   for perm_r in itertools.permutations(range(r), min(shape))
                   for perm_c in itertools.permutations(range(c), min(shape)))
        assert cost[rows, cols].sum() == pytest.approx(best)


def test_matching_prefers_the_globally_best_pairs():
    true = np.array([[0, 0, 10, 10], [8, 0, 18, 10]])
    pred = np.array([[7, 0, 17, 10], [1, 0, 11, 10]])  # greedy on pred 0 would grab true 1 -- correct here too
    pairs = sorted(match_boxes(pred, true))
    assert [(p, t) for p, t, _ in pairs] == [(0, 1), (1, 0)]


def test_perfect_predictions():
    true = [np.array([[0, 0, 10, 10], [12, 12, 20, 20]]), np.array([[-1, -1, -1, -1], [-1, -1, -1, -1]])]
    pred = [np.array([[12, 12, 20, 20], [0, 0, 10, 10]]), np.zeros((0, 4))]
    m = localisation_metrics(pred, true)
    assert m["mean_iou"] == pytest.approx(1.0) and m["precision"] == 1.0 and m["recall"] == 1.0


def test_known_shift_gives_known_iou():
    m = localisation_metrics([np.array([[2, 0, 12, 10]])], [np.array([[0, 0, 10, 10]])])
    assert m["mean_iou"] == pytest.approx(80 / 120)
    assert m["precision"] == 1.0  # 0.667 >= 0.5


def test_precision_and_recall_with_a_missing_and_an_extra_box():
    true = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([[0, 0, 10, 10], [-1, -1, -1, -1]])]
    pred = [np.array([[0, 0, 10, 10]]),                       # misses the second box
            np.array([[0, 0, 10, 10], [15, 15, 19, 19]])]     # one extra box
    m = localisation_metrics(pred, true)
    assert m["hits"] == 2 and m["predicted_boxes"] == 3 and m["true_boxes"] == 3
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)


def test_confusion_matrix():
    cm = confusion_matrix([0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 1], size=4)
    assert cm.tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 2, 0], [0, 0, 0, 0]]


def test_evaluate_on_arrays_and_table(tiny_config):
    torch.manual_seed(0)
    model = AIR(tiny_config).eval()
    x, counts = blob_images(24)
    r = evaluate(model, (x, counts.numpy()), iw_samples=4, iw_images=8, batch_size=10)
    assert r["n"] == 24 and 0 <= r["count_acc"] <= 1 and np.asarray(r["confusion"]).sum() == 24
    assert r["count_acc"] == pytest.approx(evaluate_counts(model, x, counts)["count_acc"])
    assert np.isfinite(r["elbo"]) and np.isfinite(r["iw_log_px"]) and r["iw_images"] == 8
    text = format_table(r)
    assert "count accuracy" in text and "IW log p(x), K=4" in text
    unlabelled = evaluate(model, x, iw_samples=0)
    assert "count_acc" not in unlabelled and sum(unlabelled["predicted_count_histogram"]) == 24


def test_iw_bound_k1_is_the_elbo_and_grows_with_k(tiny_config):
    torch.manual_seed(0)
    model = AIR(tiny_config).eval()
    x, _ = blob_images(8)
    with torch.no_grad():
        reps = x.repeat(300, 1, 1, 1)  # 300 independent single-sample estimates per image, in one batch
        torch.manual_seed(1)
        elbo = model.loss(reps, use_baseline=False).elbo.view(300, 8).mean(0)
        torch.manual_seed(2)
        k1 = importance_log_px(model, reps, 1).view(300, 8).mean(0)
        torch.manual_seed(3)
        k10 = importance_log_px(model, x, 10).mean()
        k100 = importance_log_px(model, x, 100).mean()
    # K=1 estimates the ELBO without bias (full densities vs analytic KLs: same expectation)
    assert float((k1.double() - elbo.double()).abs().mean()) < 0.02 * float(elbo.abs().mean()) + 1.0
    assert float(k1.mean()) < float(k10) < float(k100)


def test_evaluate_on_scenes_scores_frame_and_ink_boxes(tiny_config):
    """A Scenes input is scored against both its frame boxes and its tight ink boxes."""
    from attend_infer_repeat.data import SceneConfig, generate_scenes

    g = np.random.default_rng(0)
    digits = np.zeros((50, 28, 28), np.uint8)
    digits[:, 8:20, 10:18] = 255  # an 8x12 block of ink in each 28x28 frame
    scenes = generate_scenes(digits, g.integers(0, 10, 50), 16,
                             SceneConfig(canvas_size=20, digit_size=10, counts=(1,), seed=1))
    out = evaluate(AIR(tiny_config), scenes, iw_samples=0)
    assert {"localisation", "localisation_ink"} <= set(out)
    assert out["localisation"]["true_boxes"] == out["localisation_ink"]["true_boxes"] == 16
    assert "ink boxes" in format_table(out)


def test_evaluate_reports_drawn_object_boxes_sampled_accuracy_and_traps(tiny_config):
    """Scenes get the boxes of what each object draws scored against the ink boxes, the sampled count accuracy
    E_q[n = n_true] (q(n) exact, averaged over images) beside the deterministic one, and the trap check."""
    from attend_infer_repeat.data import SceneConfig, generate_scenes
    from attend_infer_repeat.evaluate import seeded

    g = np.random.default_rng(0)
    digits = np.zeros((50, 28, 28), np.uint8)
    digits[:, 8:20, 10:18] = 255
    scenes = generate_scenes(digits, g.integers(0, 10, 50), 24,
                             SceneConfig(canvas_size=20, digit_size=10, counts=(0, 1), seed=1))
    model = AIR(tiny_config)
    out = evaluate(model, scenes, iw_samples=0, seed=3)
    assert out["localisation_objects"]["true_boxes"] == int(scenes.counts.sum())
    with seeded(3, torch.device("cpu")):
        probs = model.count_probs(scenes.float_images())
    want = float(probs[torch.arange(24), torch.as_tensor(scenes.counts)].mean())
    assert abs(out["sampled_count_acc"] - want) < 1e-6 and 0 <= want <= 1
    assert torch.allclose(probs.sum(1), torch.ones(24))
    assert {t["name"] for t in out["traps"]} <= set(out["trap_rates"])
    table = format_table(out)
    assert "sampled count accuracy" in table and "drawn objects vs ink" in table and "trap check" in table


def test_object_boxes_are_the_tight_boxes_of_what_each_object_draws():
    from attend_infer_repeat.config import ModelConfig
    from attend_infer_repeat.model import OBJECT_INK_THRESHOLD, ink_boxes

    objects = torch.zeros(2, 3, 20, 20)
    objects[0, 0, 4:9, 2:12] = 0.9  # rows 4-8, columns 2-11
    objects[0, 1, 10, 15] = OBJECT_INK_THRESHOLD  # one pixel just bright enough
    objects[0, 2] = OBJECT_INK_THRESHOLD / 2  # faint everywhere: nothing drawn
    z_where = torch.zeros(2, 3, 3)
    z_where[0, 2] = torch.tensor([2.0, 0.5, -0.5])  # centre at pixel (15, 5)
    boxes = ink_boxes(objects, z_where, ModelConfig(image_size=20))
    assert boxes[0, 0].tolist() == [2, 4, 12, 9]
    assert boxes[0, 1].tolist() == [15, 10, 16, 11]
    assert boxes[0, 2].tolist() == [15, 5, 15, 5]  # empty, at the window's centre


def test_average_precision_ranks_detections_across_images():
    from attend_infer_repeat.evaluate import average_precision

    truth = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 10, 10], [-1, -1, -1, -1]]], float)
    perfect = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([[1, 0, 10, 10]])]
    assert average_precision(perfect, [np.array([0.9, 0.8]), np.array([0.7])], truth) == pytest.approx(1.0)
    # a false positive ranked first: precision 1/2, 2/3, 3/4 at recalls 1/3, 2/3, 1, made monotone: 3/4 throughout
    fp = [np.array([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]]), np.array([[0, 0, 10, 10]])]
    assert average_precision(fp, [np.array([0.99, 0.9, 0.8]), np.array([0.7])], truth) == pytest.approx(0.75)
    # ... and ranked last, it costs nothing: every digit is found before it
    assert average_precision(fp, [np.array([0.1, 0.9, 0.8]), np.array([0.7])], truth) == pytest.approx(1.0)
    # two boxes on one digit: only one of them is a hit; a missed digit caps the recall
    dup = [np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), np.zeros((0, 4))]
    assert average_precision(dup, [np.array([0.9, 0.8]), np.zeros(0)], truth) == pytest.approx(1 / 3)
    assert np.isnan(average_precision([np.zeros((0, 4))], [np.zeros(0)], np.full((1, 1, 4), -1.0)))
    from attend_infer_repeat.errors import InputError

    with pytest.raises(InputError, match="predicted box sets"):
        average_precision(perfect, [np.zeros(2)], truth)


def test_boxes_past_the_canvas_edge_are_predictions_not_padding():
    """A window may reach past the top or left edge (negative coordinates): it is still a predicted box, in the
    localisation metrics and in AP (it used to be dropped as padding, and AP then indexed past the boxes)."""
    from attend_infer_repeat.errors import InputError
    from attend_infer_repeat.evaluate import average_precision, localisation_metrics

    truth = np.array([[[0, 0, 10, 10], [-1, -1, -1, -1]]], float)
    edge = [np.array([[-2.0, -1.0, 10.0, 10.0]])]  # IoU 100/132 with the digit
    out = localisation_metrics(edge, truth)
    assert out["predicted_boxes"] == 1 and out["hits"] == 1 and out["mean_iou"] == pytest.approx(100 / 132)
    assert average_precision(edge, [np.array([0.9])], truth) == pytest.approx(1.0)
    with pytest.raises(InputError, match="1 predicted boxes but 2 scores"):
        average_precision(edge, [np.array([0.9, 0.5])], truth)
