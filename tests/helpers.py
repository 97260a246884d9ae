"""Helpers the tests share (data made on the spot, an untrained checkpoint, a headless browser page)."""
import gzip
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from attend_infer_repeat.config import ModelConfig, RunConfig, TrainConfig
from attend_infer_repeat.train import Data


def blob_images(n: int, size: int = 20, seed: int = 0) -> torch.Tensor:
    """n images (n, 1, size, size) with 0-2 bright squares: a cheap stand-in for multi-MNIST."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    counts = torch.randint(0, 3, (n,), generator=g)
    side = size // 4
    for i in range(n):
        for k in range(int(counts[i])):
            r = int(torch.randint(0, size // 2 - side + 1, (1,), generator=g)) + (size // 2) * k
            c = int(torch.randint(0, size - side + 1, (1,), generator=g))
            x[i, 0, r:r + side, c:c + side] = 1.0
    return x, counts


_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding of ``a``: magic (0, 0, type code, ndim), big-endian dims, big-endian data."""
    header = bytes([0, 0, _CODES[a.dtype], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, a: np.ndarray, gz: bool | None = None) -> Path:
    """Write an IDX file (gzipped when ``gz``, or by default when the name ends in .gz)."""
    data = idx_bytes(a)
    gz = path.suffix == ".gz" if gz is None else gz
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def untrained_checkpoint(directory: Path, image_size: int = 50) -> Path:
    """A small untrained model saved as 'air train' saves one: what the server tests serve. Its z_pres logit
    starts at 0, so its count depends on the image (not always N)."""
    from attend_infer_repeat.checkpoint import save_checkpoint
    from attend_infer_repeat.config import RunConfig, TrainConfig
    from attend_infer_repeat.model import AIR

    torch.manual_seed(1)
    cfg = ModelConfig(image_size=image_size, z_what_dim=8, lstm_hidden=32, encoder_hidden=32, decoder_hidden=32,
                      predict_hidden=32, z_pres_init_logit=0.0, decoder_output_bias=0.0)
    path = Path(directory) / "best.pt"
    save_checkpoint(path, {"config": RunConfig(model=cfg, train=TrainConfig()).to_dict(),
                           "model": AIR(cfg).state_dict(), "step": 0})
    return path


def chromium_path() -> str | None:
    """Debian's Chromium, which the browser tests drive through Playwright (never a downloaded browser)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def playwright_missing() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return True
    return False


#: the browser tests run where Debian's Chromium and the playwright package are installed (.ci/run installs both)
needs_browser = pytest.mark.skipif(
    chromium_path() is None or playwright_missing(),
    reason="Debian's chromium (apt-get install -y chromium) or the playwright Python package (pip install -e "
    "'.[dev]') is missing; these pages are tested in a real headless browser only where one is available")


@contextmanager
def browser_page(width: int, height: int):
    """A page of Debian's headless Chromium, driven by Playwright, and the list its JavaScript errors go to."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def tiny_data(n_train=256, n_test=64):
    """A trainer's data made of blob images (uint8), counts known."""
    xtr, ctr = blob_images(n_train, seed=1)
    xte, cte = blob_images(n_test, seed=2)
    u8 = lambda x: (x[:, 0] * 255).to(torch.uint8)  # noqa: E731
    return Data(u8(xtr), ctr, u8(xte), cte)


def tiny_run(tiny_config, **train):
    """A short run of a tiny model: a few steps, evaluated and checkpointed along the way."""
    t = dict(steps=6, batch_size=16, lr=1e-3, eval_every=3, eval_size=64, checkpoint_every=2, log_every=1,
             seed=0, device="cpu")
    t.update(train)
    return RunConfig(model=tiny_config, train=TrainConfig(**t))


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])
