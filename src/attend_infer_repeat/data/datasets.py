"""What a run trains and is evaluated on, by ``TrainConfig.dataset``:

* ``mnist`` (the default), ``fashion``, ``sprites``: generated scenes (:mod:`~attend_infer_repeat.data.scenes`,
  :mod:`~attend_infer_repeat.data.sprites`), training scenes from the *train* items, held-out scenes from the *test*
  items (sprites: another seed), cached in the data cache dir;
* ``files``: the user's own images (``data_path``): a folder of image files (PNG, JPEG, ...), a ``.npy``/``.npz``
  array (N,H,W), (N,1,H,W) or (N,H,W,C), uint8 or float in [0, 1], read and made fit for the model as
  ``air infer`` does (:mod:`~attend_infer_repeat.data.images`: colour to grey, dark-on-light inverted, other sizes
  padded and resized); or a scene ``.npz`` written by ``air data``, which keeps its counts and boxes. A seeded
  ``holdout`` fraction is set aside for evaluation. Images without counts train the same way; their held-out
  evaluation has the ELBO but no count accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from .images import prepare, read_inputs
from .registry import dataset
from .scene import NPZ_KEYS, SceneConfig, Scenes
from .scenes import load_or_make_scenes


def scene_config(cfg, split: str) -> SceneConfig:
    """The SceneConfig of a run's generated ``split`` (held-out scenes use seed ``data_seed + 1``)."""
    t = cfg.train
    return SceneConfig(canvas_size=cfg.model.image_size, digit_size=t.digit_size, max_digit_size=t.max_digit_size,
                       counts=t.counts, allow_overlap=t.allow_overlap, max_overlap=t.max_overlap,
                       seed=t.data_seed + (split == "test"), dataset=t.dataset)


def is_scene_file(path: str | Path) -> bool:
    """Whether ``path`` is an ``.npz`` holding every key of a scene file (``air data``'s output)."""
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return all(k in z.files for k in NPZ_KEYS)
    except Exception as e:  # not a zip, truncated ...
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e


def read_user_images(path: str | Path, size: int, invert: str = "auto") -> Scenes | np.ndarray:
    """The images at ``path`` for training: a Scenes when it is a scene file, else a uint8 (N, size, size)
    array of the images read and prepared as ``air infer`` prepares them. Every problem (no such path, an empty
    folder, a file that is no image, an array of the wrong shape, NaN) is a DataError naming the file."""
    path = Path(path)
    if is_scene_file(path):
        scenes = Scenes.load(path)
        if scenes.config.canvas_size != size:
            raise DataError(f"{path}: its scenes are {scenes.config.canvas_size}x{scenes.config.canvas_size} but "
                            f"the model works on {size}x{size} images; make the scenes with 'air data "
                            f"--canvas-size {size}'")
        return scenes
    sources = read_inputs([path])
    images = np.stack([prepare(s.pixels, size, invert).image for s in sources])
    return np.rint(images * 255).astype(np.uint8)


def _take(data, idx: np.ndarray):
    return data.take(idx) if isinstance(data, Scenes) else data[idx]


def split_user_data(data, holdout: float, seed: int, batch_size: int):
    """(train, held-out) parts of the user's images: a seeded permutation, ``holdout`` of it (at least one
    image) held out. Refuses data too small to train on (fewer training images than one batch)."""
    n = len(data)
    n_test = max(1, int(round(holdout * n)))
    n_train = n - n_test
    if n_train < batch_size:
        raise InputError(f"only {n} images: after holding out {n_test} for evaluation, {n_train} are left to "
                         f"train on, fewer than one batch of {batch_size}; give more images or a smaller "
                         "--batch-size")
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return _take(data, np.sort(perm[n_test:])), _take(data, np.sort(perm[:n_test]))


def run_data(cfg) -> tuple:
    """``(train, held-out)`` of a run, each a Scenes (counts known) or a uint8 (N, H, W) array (unlabelled)."""
    t = cfg.train
    if t.dataset == "files":
        data = read_user_images(t.data_path, cfg.model.image_size)
        return split_user_data(data, t.holdout, t.data_seed, t.batch_size)
    train = load_or_make_scenes("train", t.n_train, scene_config(cfg, "train"), data_dir=t.data_dir)
    test = load_or_make_scenes("test", t.n_test, scene_config(cfg, "test"), data_dir=t.data_dir)
    return train, test


def run_test_data(cfg):
    """The held-out part of a run (what ``air train`` scored): a Scenes, or a uint8 array of unlabelled images."""
    t = cfg.train
    if t.dataset == "files":
        return run_data(cfg)[1]
    return load_or_make_scenes("test", t.n_test, scene_config(cfg, "test"), data_dir=t.data_dir)


def counts_text(counts) -> str:
    """(0, 1, 2) -> '0,1,2'; a longer run of consecutive counts as a range: '0-15'."""
    counts = tuple(counts)
    if len(counts) > 3 and counts == tuple(range(counts[0], counts[-1] + 1)):
        return f"{counts[0]}-{counts[-1]}"
    return ",".join(map(str, counts))


def describe(cfg) -> str:
    """One line saying what a run trained on (for the report and the logs)."""
    t = cfg.train
    if t.dataset == "files":
        return f"the user's images at {t.data_path} ({t.holdout:.0%} held out for evaluation)"
    size = f"{t.digit_size} px" if t.max_digit_size in (None, t.digit_size) else \
        f"{t.digit_size}-{t.max_digit_size} px"
    d = dataset(t.dataset)
    counts = counts_text(t.counts)
    return (f"{d.title}: {cfg.model.image_size}x{cfg.model.image_size} scenes of {counts} "
            f"{d.objects} ({size}), {t.n_train} for training, {t.n_test} held out")
