"""The data: the registry of data sets (:mod:`.registry`), the scene format (:mod:`.scene`), the generators
(:mod:`.scenes` for digits and Fashion-MNIST items cut from their image sets by :mod:`.mnist`, :mod:`.sprites`
for drawn shapes, the layout helpers both share in :mod:`.layout`), the user's own images (:mod:`.images`) and
what a run trains on (:mod:`.datasets`)."""
from .mnist import load_fashion_mnist, load_items, load_mnist
from .registry import DATASETS, SCENE_DATASETS, DataSet, dataset
from .scene import SceneConfig, Scenes
from .scenes import generate_scenes, generate_sprites, load_or_make_scenes, make_scenes

__all__ = ["DATASETS", "SCENE_DATASETS", "DataSet", "SceneConfig", "Scenes", "dataset", "generate_scenes",
           "generate_sprites", "load_fashion_mnist", "load_items", "load_mnist", "load_or_make_scenes",
           "make_scenes"]
