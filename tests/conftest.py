
import numpy as np
import pytest
import torch

from attend_infer_repeat.config import ModelConfig


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch, tmp_path_factory):
    """Every test starts from the same seeds and never writes to the user's real data cache. Training runs
    eagerly here (not the default ``compile="auto"``, whatever AIR_COMPILE says on this machine) unless a test asks
    for torch.compile explicitly: compiling takes 10-40 s per model shape (test_compile.py pays it where it counts)."""
    torch.manual_seed(0)
    np.random.seed(0)
    monkeypatch.setenv("AIR_DATA_DIR", str(tmp_path_factory.getbasetemp() / "air-cache"))
    monkeypatch.setenv("AIR_COMPILE", "off")


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A small model (20x20 images) for fast structural tests."""
    return ModelConfig(image_size=20, window_size=8, z_what_dim=4, lstm_hidden=16, encoder_hidden=16,
                       decoder_hidden=16, predict_hidden=16, scale_prior_mean=2.0, dair=False)
