"""Drawing scene data sets: multi-MNIST (Eslami et al., 2016), grey canvases holding a few MNIST digits at random
places, and the other data sets of the registry (Multi-Fashion-MNIST, procedural sprites) in the same
:class:`~.scene.Scenes` format.

``generate_scenes`` builds a data set from any array of digits; ``generate_sprites`` draws sprites;
``make_scenes`` builds the scenes of a registered data set (``config.dataset``) from the image-set split of the
same name, so train scenes hold only train digits and test scenes only test digits (a model evaluated on test
scenes has never seen those digit images); ``load_or_make_scenes`` caches the result.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from .digits import draw_from_items
from .layout import is_int
from .mnist import SPLITS, default_cache_dir, load_items
from .registry import scene_dataset
from .scene import SceneConfig, Scenes, check_scene_budget
from .sprites import draw_sprites

log = logging.getLogger(__name__)


def _check(n, config, split: str) -> None:
    if not isinstance(config, SceneConfig):
        raise InputError(f"config must be a SceneConfig, got {type(config).__name__}")
    if not isinstance(split, str) or not split:
        raise InputError(f"split must be a non-empty string, got {split!r}")
    if not is_int(n) or n < 0:
        raise InputError(f"n (number of scenes) must be a non-negative integer, got {n!r}")
    check_scene_budget(int(n), config)


def generate_scenes(
    digits: np.ndarray, labels: np.ndarray, n: int, config: SceneConfig, split: str = "train"
) -> Scenes:
    """Draw ``n`` scenes from ``digits`` (uint8 (M,h,w), any square size; resized when it differs from the
    digit size drawn) and their ``labels`` (M,).

    Deterministic for ``(config.seed, split)``. Counts, digits, sizes and positions are drawn for all scenes at
    once; the ink-overlap constraint is met by vectorised rejection sampling: the scenes whose ink boxes
    intersect get new positions (all their digits, so the result is uniform over valid placements), repeated
    for at most ``digits.MAX_ROUNDS`` rounds. Before sampling, a pilot of trial placements estimates how often a
    placement is valid; too rarely and the request is refused at once with an ``InputError``, so a
    (near-)impossible request never loops.
    """
    _check(n, config, split)
    return Scenes(**draw_from_items(digits, labels, n, config, split), config=config, split=split)


def generate_sprites(n: int, config: SceneConfig, split: str = "train") -> Scenes:
    """``n`` sprite scenes drawn with ``config`` (its ``digit_size`` .. ``max_digit_size`` are the shape sizes)."""
    _check(n, config, split)
    return Scenes(**draw_sprites(int(n), config, split), config=config, split=split)

def make_scenes(
    split: str,
    n: int,
    config: SceneConfig | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> Scenes:
    """``n`` scenes of ``split`` built from the MNIST digits (or Fashion-MNIST items, ``config.dataset``) of the
    same split only (train scenes from the 60k train digits, test scenes from the 10k test digits), so test
    scenes hold digit images no model trained on train scenes has seen. ``data_dir``/``download``/``cache_dir``
    are passed to ``load_items``. Sprites (``config.dataset == "sprites"``) are drawn, not loaded."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    config = config if config is not None else SceneConfig()
    _check(n, config, split)  # before loading (or downloading) anything
    d = scene_dataset(config.dataset)
    items = None if d.items is None else \
        load_items(d.items, split, data_dir=data_dir, download=download, cache_dir=cache_dir)
    return Scenes(**d.draw(int(n), config, split, items), config=config, split=split)


def scenes_cache_path(split: str, n: int, config: SceneConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``load_or_make_scenes`` keeps ``n`` scenes of ``split`` drawn with ``config``."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / f"scenes-{split}-n{n}-{config.digest()}.npz"


def load_or_make_scenes(
    split: str,
    n: int,
    config: SceneConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Scenes:
    """``make_scenes`` with a file cache: the scenes are kept in the cache dir under a name encoding the split,
    ``n`` and the config's hash (``scenes_cache_path``), so a trainer can call this on every start and pay for
    generation only once. A damaged cache file is regenerated. The cache assumes standard MNIST: after pointing
    ``data_dir`` at other digits, use another ``cache_dir``."""
    config = config if config is not None else SceneConfig()
    if not isinstance(config, SceneConfig):
        raise InputError(f"config must be a SceneConfig, got {type(config).__name__}")
    path = scenes_cache_path(split, n, config, cache_dir)
    if path.is_file():
        try:
            scenes = Scenes.load(path)
            if len(scenes) == n and scenes.config == config and scenes.split == split:
                log.info("loaded %d cached %s scenes from %s", n, split, path)
                return scenes
            log.warning("cache %s does not match the request; regenerating", path)
        except DataError as e:
            log.warning("ignoring damaged scene cache: %s", e)
    scenes = make_scenes(split, n, config, data_dir=data_dir, download=download, cache_dir=cache_dir)
    try:
        scenes.save(path)
    except DataError as e:
        log.warning("could not cache the scenes: %s", e)
    return scenes
