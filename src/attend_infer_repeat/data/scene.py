"""The scene format: ``SceneConfig`` (how a data set of scenes is drawn) and ``Scenes`` (one drawn data set, with
each object's box and class), saved as one ``.npz``. What draws them is in :mod:`.scenes`.

The paper's data set is 50x50 images with 0, 1 or 2 non-overlapping MNIST digits, each count equally likely,
digits unscaled. ``SceneConfig`` describes such a data set (and variants: other canvas sizes, digit counts,
randomly scaled digits, overlapping digits, other objects); "digit" below stands for whichever object the data
set holds.

*Non-overlapping* is defined on the digits' **ink** bounding boxes (the tight box of the pixels > 0 after
placement), not on their frames: two 28x28 frames can never be disjoint on a 50x50 canvas (28 + 28 > 50), so
the paper's data set only makes sense if the frames may overlap on their blank margins while the inked parts
stay apart. Where digits do overlap (``allow_overlap=True``) pixels are combined with ``max``.

Every scene records, per digit slot (``K = max(counts)`` slots, unused ones padded with -1):

* ``boxes``: the digit's frame, the ``size x size`` square it was pasted as, ``(x_min, y_min, x_max, y_max)``
  in pixels with exclusive max edges (a digit covering columns 10..37 has ``x_min=10, x_max=38``);
* ``ink_boxes``: the tight box of its ink, same convention (-1 also for a digit with no ink at all);
* ``labels``: its digit class.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, InputError
from ..files import atomic_write
from .layout import is_int
from .registry import scene_dataset

#: Bumped whenever the generator's output for a given config changes, so cached scene files are rebuilt.
GENERATOR_VERSION = 1

#: Keys of a saved scene file. ``images``, ``counts`` and ``boxes`` are read by an external scorer as-is.
NPZ_KEYS = ("images", "counts", "boxes", "ink_boxes", "labels", "config", "split")

#: The most memory a generated data set may take (images, boxes and labels), checked before anything is drawn:
#: a mistyped --n or --canvas-size gets an estimate and an error, not a machine that runs out of memory.
MAX_SCENE_BYTES = 4 * 2**30
MAX_CANVAS_SIZE = 4096
MAX_OBJECTS = 64
#: how the digits of a scene are kept apart (SceneConfig.placement)
PLACEMENTS = ("joint", "sequential")


def scene_bytes(n: int, config: "SceneConfig") -> int:
    """The memory ``n`` scenes drawn with ``config`` take: uint8 images, two float32 boxes and a label per object."""
    return int(n) * (config.canvas_size ** 2 + max(config.max_count, 1) * (2 * 16 + 8) + 8)


def check_scene_budget(n: int, config: "SceneConfig") -> None:
    """InputError when ``n`` scenes of ``config`` would need more than ``MAX_SCENE_BYTES``."""
    need = scene_bytes(n, config)
    if need > MAX_SCENE_BYTES:
        c = config.canvas_size
        most = MAX_SCENE_BYTES // max(scene_bytes(1, config), 1)
        raise InputError(f"{n} scenes of {c}x{c} px would take about {need / 2**30:.1f} GiB of memory, more than "
                         f"the {MAX_SCENE_BYTES // 2**30} GiB allowed; ask for at most {most} scenes, or a smaller "
                         "canvas")




def real_box_rows(boxes) -> np.ndarray:
    """Which rows of a (K, 4) box array are real boxes: padding rows (``Scenes.boxes`` pads with -1) have a
    negative or non-finite coordinate."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.isfinite(b).all(axis=1) & (b >= 0).all(axis=1)


@dataclass(frozen=True)
class SceneConfig:
    """How a scene data set is drawn. The defaults are the data set's (``dataset``, :mod:`.registry`); for
    ``mnist`` they are the paper's: 50x50 canvases, unscaled 28x28 digits, 0, 1 or 2 of them with equal
    probability, their ink never overlapping.

    ``max_digit_size``: when set, each digit's side is drawn uniformly from ``[digit_size, max_digit_size]``
    and the digit resized (with antialiasing) to it. ``counts``: the possible numbers of digits per scene, drawn
    uniformly. ``seed``: everything is a deterministic function of the seed (and the split).

    Every field is checked on construction; a configuration that can obviously never be generated (a digit
    bigger than the canvas, or non-overlapping digits whose frames together exceed the canvas area) is refused
    here with an ``InputError`` rather than failing later.
    """

    # None, here and below: the data set's (data/registry.py; mnist: the paper's 50, 28 px, 0-2 digits, joint)
    canvas_size: int | None = None
    digit_size: int | None = None
    max_digit_size: int | None = None
    counts: tuple[int, ...] | None = None
    allow_overlap: bool = False
    # without allow_overlap: the largest IoU two objects' ink boxes may have (0: apart, the paper's data; 0.2:
    # digits may touch and cross a little)
    max_overlap: float = 0.0
    seed: int = 0
    dataset: str = "mnist"  # what the objects are: MNIST digits, Fashion-MNIST items or procedural sprites
    # how digits are kept apart (without allow_overlap): "joint", the paper's data: a scene's positions are drawn
    # again together until no two overlap (uniform over the valid layouts, feasible for a few digits);
    # "sequential": one digit after another, each placed apart from those before (feasible for many digits)
    placement: str | None = None

    def __post_init__(self) -> None:
        data = scene_dataset(self.dataset)  # one the package draws, or a clear error
        for name in ("canvas_size", "counts", "placement"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(data, name))
        if self.digit_size is None:  # a size given alone means that one size, as on air train's command line
            object.__setattr__(self, "digit_size", data.digit_size)
            if self.max_digit_size is None:
                object.__setattr__(self, "max_digit_size", data.max_digit_size)
        for name in ("canvas_size", "digit_size"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.canvas_size > MAX_CANVAS_SIZE:
            raise InputError(f"canvas_size must be at most {MAX_CANVAS_SIZE}, got {self.canvas_size}")
        if self.digit_size > self.canvas_size:
            raise InputError(f"digit_size {self.digit_size} is larger than the canvas ({self.canvas_size}); "
                             "use a smaller digit_size or a larger canvas_size")
        if self.max_digit_size is not None:
            m = self.max_digit_size
            if not is_int(m) or m < 1:
                raise InputError(f"max_digit_size must be a positive integer or None, got {m!r}")
            m = int(m)
            if m < self.digit_size:
                raise InputError(f"max_digit_size {m} is smaller than digit_size {self.digit_size}")
            if m > self.canvas_size:
                raise InputError(f"max_digit_size {m} is larger than the canvas ({self.canvas_size})")
            object.__setattr__(self, "max_digit_size", m)
        counts = self.counts
        if isinstance(counts, (str, bytes)) or not hasattr(counts, "__iter__"):
            raise InputError(f"counts must be a sequence of non-negative integers, got {counts!r}")
        counts = tuple(counts)
        if not counts:
            raise InputError("counts must not be empty")
        if not all(is_int(c) and c >= 0 for c in counts):
            raise InputError(f"counts must be non-negative integers, got {counts!r}")
        counts = tuple(int(c) for c in counts)
        if max(counts) > MAX_OBJECTS:  # also the bound on a model's steps (config.MODEL_LIMITS)
            raise InputError(f"counts must be at most {MAX_OBJECTS} objects per scene, got {max(counts)}")
        if len(set(counts)) != len(counts):
            raise InputError(f"counts must be distinct (each is drawn with equal probability), got {counts!r}")
        object.__setattr__(self, "counts", counts)
        if not isinstance(self.allow_overlap, (bool, np.bool_)):
            raise InputError(f"allow_overlap must be True or False, got {self.allow_overlap!r}")
        object.__setattr__(self, "allow_overlap", bool(self.allow_overlap))
        if isinstance(self.max_overlap, bool) or not isinstance(self.max_overlap, (int, float, np.floating)) \
                or not 0 <= self.max_overlap < 1:
            raise InputError(f"max_overlap must be a number in [0, 1) (the largest IoU of two objects' ink boxes), "
                             f"got {self.max_overlap!r}; allow_overlap=True allows any overlap")
        object.__setattr__(self, "max_overlap", float(self.max_overlap))
        if not is_int(self.seed) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if self.placement not in PLACEMENTS:
            raise InputError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.placement == "sequential" and scene_dataset(self.dataset).items is None:
            raise InputError(f"placement 'sequential' is for scenes cut from an image set (mnist, fashion), not "
                             f"{self.dataset!r}")
        self._check_packing()

    def _check_packing(self) -> None:
        """A-priori bound: ``k`` non-overlapping digits whose frames cover more than the canvas could only be
        placed in the rare case that every one of them is unusually thin, so such a request is refused."""
        k = self.max_count
        if self.allow_overlap or k < 2:
            return
        area = k * self.digit_size**2
        if area > self.canvas_size**2:
            raise InputError(
                f"cannot place {k} non-overlapping digits of size {self.digit_size} on a "
                f"{self.canvas_size}x{self.canvas_size} canvas: their frames cover {area} px, more than the "
                f"canvas' {self.canvas_size**2}; use a larger canvas_size, a smaller digit_size, fewer digits "
                "(counts) or allow_overlap=True")

    @property
    def max_count(self) -> int:
        """The number of digit slots ``K`` every scene record has."""
        return max(self.counts)

    @property
    def sizes(self) -> range:
        """The possible digit sizes."""
        return range(self.digit_size, (self.max_digit_size or self.digit_size) + 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["counts"] = list(self.counts)
        if d["dataset"] == "mnist":  # written only when not the default: older files and cache names stay valid
            del d["dataset"]
        if d["max_overlap"] == 0.0:
            del d["max_overlap"]
        if d["placement"] == "joint":  # (as dataset and max_overlap)
            del d["placement"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SceneConfig":
        """Inverse of ``to_json``; ``InputError`` for anything that is not a valid config."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"scene config is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise InputError(f"scene config must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"scene config has unknown fields {sorted(unknown)}")
        return cls(**d)

    def digest(self) -> str:
        """Short stable hash of the config and the generator version (names cache files)."""
        text = f"v{GENERATOR_VERSION}:{self.to_json()}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- scenes
@dataclass
class Scenes:
    """A generated data set. ``images`` (N,H,W) uint8; ``counts`` (N,) int64; ``boxes`` and ``ink_boxes``
    (N,K,4) float32 ``(x_min, y_min, x_max, y_max)`` with exclusive max edges and -1 rows as padding;
    ``labels`` (N,K) int64 with -1 padding. See the module docstring for the box conventions."""

    images: np.ndarray
    counts: np.ndarray
    boxes: np.ndarray
    ink_boxes: np.ndarray
    labels: np.ndarray
    config: SceneConfig
    split: str = "train"

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise InputError(f"inconsistent Scenes: {problem}")

    def _problem(self) -> str | None:
        """What is inconsistent about the arrays, or None."""
        arrays = {k: getattr(self, k) for k in ("images", "counts", "boxes", "ink_boxes", "labels")}
        for k, a in arrays.items():
            if not isinstance(a, np.ndarray):
                return f"{k} is a {type(a).__name__}, not a numpy array"
        if not isinstance(self.config, SceneConfig):
            return f"config is a {type(self.config).__name__}, not a SceneConfig"
        im = self.images
        if im.ndim != 3 or im.dtype != np.uint8:
            return f"images must be (N,H,W) uint8, got {im.shape} {im.dtype}"
        n, k = len(im), self.config.max_count
        c = self.config.canvas_size
        if im.shape[1:] != (c, c):
            return f"images are {im.shape[1]}x{im.shape[2]} but the config's canvas is {c}x{c}"
        if self.counts.shape != (n,) or self.counts.dtype.kind not in "iu":
            return f"counts must be ({n},) integers, got {self.counts.shape} {self.counts.dtype}"
        for name in ("boxes", "ink_boxes"):
            a = arrays[name]
            if a.shape != (n, k, 4) or a.dtype.kind != "f":
                return f"{name} must be ({n}, {k}, 4) floats, got {a.shape} {a.dtype}"
        if self.labels.shape != (n, k) or self.labels.dtype.kind not in "iu":
            return f"labels must be ({n}, {k}) integers, got {self.labels.shape} {self.labels.dtype}"
        if n and (self.counts.min() < 0 or self.counts.max() > k):
            return f"counts must lie in 0..{k}"
        if not isinstance(self.split, str) or not self.split:
            return f"split must be a non-empty string, got {self.split!r}"
        return None

    def __len__(self) -> int:
        return len(self.images)

    def float_images(self, index: slice | np.ndarray | None = None) -> torch.Tensor:
        """The images (all, or ``images[index]``) as a float32 tensor (N,1,H,W) scaled to [0,1]."""
        images = self.images if index is None else self.images[index]
        return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0).unsqueeze(1)

    def take(self, index: slice | np.ndarray) -> "Scenes":
        """The scenes at ``index`` (a slice or an index array), with their counts, boxes and labels."""
        return Scenes(images=self.images[index], counts=self.counts[index], boxes=self.boxes[index],
                      ink_boxes=self.ink_boxes[index], labels=self.labels[index], config=self.config,
                      split=self.split)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` (compressed; keys ``NPZ_KEYS``, the config as a JSON string) atomically to exactly
        ``path``; returns the path."""
        path = Path(path)
        arrays = dict(images=self.images, counts=self.counts.astype(np.int64), boxes=self.boxes.astype(np.float32),
                      ink_boxes=self.ink_boxes.astype(np.float32), labels=self.labels.astype(np.int64),
                      config=np.array(self.config.to_json()), split=np.array(self.split))
        try:
            return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        except OSError as e:
            raise DataError(f"cannot write scenes to {path}: {e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scenes":
        """Read a file written by ``save``; ``DataError`` (naming the file) if it is missing, not an ``.npz``,
        lacks a key or holds inconsistent arrays."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"scene file {path} does not exist (make one with 'air data {path}')")
        try:
            z = np.load(path, allow_pickle=False)
        except Exception as e:  # not a zip / npy: ValueError, OSError, zipfile.BadZipFile, EOFError ...
            raise DataError(f"{path} is not a scene .npz file ({type(e).__name__}: {e})") from e
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is a single .npy array, not a scene .npz file")
        with z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{path} is not a scene file: missing keys {missing} (has {sorted(z.files)})")
            try:
                arrays = {k: z[k] for k in NPZ_KEYS}
            except Exception as e:  # object arrays (allow_pickle=False), truncated members, bad CRC ...
                raise DataError(f"{path} is damaged: {type(e).__name__}: {e}") from e
        try:
            config = SceneConfig.from_json(str(arrays.pop("config")))
        except InputError as e:
            raise DataError(f"{path}: bad scene config: {e}") from e
        except TypeError as e:
            raise DataError(f"{path}: bad scene config: {e}") from e
        split = str(arrays.pop("split"))
        try:
            return cls(config=config, split=split, **arrays)
        except InputError as e:
            raise DataError(f"{path} holds {e}") from e
