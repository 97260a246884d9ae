"""The data sets ``air`` trains on, one entry each: what the objects are, where they come from, and the defaults
that differ from multi-MNIST's. The CLI's choices, the titles in messages and reports, the scene generator's
dispatch and the defaults a run resolves all read this table: adding a data set is one entry here (and, for a new
kind of object, its generator: a function from ``(n, config, split, items)`` to the scene arrays, where ``items``
is the ``(images, labels)`` of the image set named by ``items``, loaded by :func:`~.scenes.make_scenes`, or None).

Why the defaults differ (measured in ``benchmarks/results/datasets.json``): Fashion-MNIST items fill their 28x28
frame, so two of them rarely fit side by side on 50x50 at full size (at 20 px as many random placements keep their
ink apart as for 22 px digits), and the zoom prior stays at a 17 px window, which framed 20 px items better than a
window the size of their frame; on sprites the plain model stacks all its steps on the same flat shape, Difference
AIR does not.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import InputError
from .digits import draw_from_items
from .sprites import draw_sprites


def _cut_from_items(n, config, split, items):
    return draw_from_items(*items, n, config, split)


def _drawn(n, config, split, items):
    return draw_sprites(n, config, split)


@dataclass(frozen=True)
class DataSet:
    name: str  # as typed: air train --dataset NAME
    title: str  # in messages and reports
    objects: str  # what its scenes hold, in a sentence
    noun: str  # one word for its objects
    items: str | None  # the image set its objects are cut from (mnist.load_items), None: drawn or the user's own
    source: str | None  # that image set's name, in messages
    digit_size: int = 28  # object size in px (the smallest, where max_digit_size gives a range)
    max_digit_size: int | None = None
    scale_prior_mean: float = 3.0  # the zoom prior's mean: the window is image_size / s px
    dair: bool = False  # Difference AIR by default
    canvas_size: int = 50  # the scenes' side in px (the model's image_size)
    counts: tuple[int, ...] = (0, 1, 2)  # objects per scene, each count equally likely
    placement: str = "joint"  # how objects are kept apart (SceneConfig.placement)
    # the grid model's cells per side: cells about the zoom prior's window (17 px) here; smaller for many digits,
    # where two digits' centres must not share a cell (benchmarks/results/grid_probes.json: 8 beat 6)
    grid_size: int = 3
    generated: bool = True  # scenes drawn by the package (else the user's images)
    draw: Callable | None = _cut_from_items  # the generator (None: not drawn)


DATASETS: dict[str, DataSet] = {d.name: d for d in (
    DataSet("mnist", "multi-MNIST", "MNIST digits", "digits", items="mnist", source="MNIST"),
    DataSet("fashion", "Multi-Fashion-MNIST", "Fashion-MNIST items", "items", items="fashion", source="Fashion-MNIST",
            digit_size=20),
    DataSet("sprites", "procedural sprites", "squares, triangles and circles", "shapes", items=None, source=None,
            digit_size=10, max_digit_size=20, dair=True, draw=_drawn),
    # many objects (as SPAIR's and SPACE's benchmarks): 0-15 digits of 14-20 px on 84x84, ink apart; the zoom prior's
    # mean puts the window at about 17 px, the digits' middle size
    DataSet("mnist-many", "many-MNIST", "MNIST digits", "digits", items="mnist", source="MNIST", digit_size=14,
            max_digit_size=20, scale_prior_mean=5.0, canvas_size=84, counts=tuple(range(16)), placement="sequential",
            grid_size=8),
    # the transfer test of a model trained on mnist-many: the same digits and canvas, up to 20 of them
    DataSet("mnist-many-20", "many-MNIST, 0-20 digits", "MNIST digits", "digits", items="mnist", source="MNIST",
            digit_size=14, max_digit_size=20, scale_prior_mean=5.0, canvas_size=84, counts=tuple(range(21)),
            placement="sequential", grid_size=8),
    DataSet("files", "your images", "your images", "images", items=None, source=None, generated=False, draw=None),
)}
#: the data sets whose scenes the package draws itself (air data, --dataset)
SCENE_DATASETS = tuple(name for name, d in DATASETS.items() if d.generated)


def dataset(name: str) -> DataSet:
    """The registry entry of ``name``; a clear error naming the known ones otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise InputError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}") from None


def scene_dataset(name: str) -> DataSet:
    """The entry of a data set whose scenes the package draws (not 'files')."""
    d = DATASETS.get(name) if isinstance(name, str) else None
    if d is None or not d.generated:
        raise InputError(f"dataset must be one of {', '.join(SCENE_DATASETS)}, got {name!r}")
    return d
