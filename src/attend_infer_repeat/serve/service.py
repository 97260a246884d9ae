"""The page's requests as plain Python: :class:`Service` runs the model for each of them and checks what
the client sent (:class:`RequestError`)."""

from __future__ import annotations

import dataclasses
import math
import secrets
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ..data.images import IMAGE_FORMATS
from ..errors import AIRError, DataError
from ..model import attention
from .limits import (
    DECODES_AT_ONCE,
    MAX_BODY_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_SAMPLES,
    N_SCENES,
    SCALE_RANGE,
    SHIFT_RANGE,
    SHRINK_FACTOR,
)


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a message that says what to send instead."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _u8(a) -> list[int]:
    """Float image(s) in [0, 1] (values outside are clipped) -> a flat list of 0..255 integers for the page."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return (np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).ravel().tolist()


def _round(values, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values, dtype=np.float64).ravel()]


def _number(body: dict, key: str, lo: float, hi: float, default: float | None = None) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be a number between {lo} and {hi}, got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise RequestError(f"'{key}' must be a number between {lo} and {hi}, got {value!r}")
    return float(value)


def _integer(body: dict, key: str, lo: int, hi: int, default=None, allow_none: bool = False) -> int | None:
    value = body.get(key, default)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        extra = " or null" if allow_none else ""
        raise RequestError(f"'{key}' must be an integer between {lo} and {hi}{extra}, got {value!r}")
    return value


@dataclass
class SceneBank:
    """Held-out scenes for "random test scene": uint8 images (N, H, W), true counts and frame boxes."""

    images: np.ndarray
    counts: np.ndarray
    boxes: np.ndarray
    source: str


class Service:
    """What the web page asks of a model, without HTTP: every method takes and returns plain Python values,
    validates its input (``RequestError`` for the client's mistakes) and holds the model lock while it runs
    the model."""

    def __init__(self, model, name: str = "model", scenes: str | None = None, run_config=None):
        self.model = model.eval()
        self.config = model.config
        self.name = name
        self.scenes_path = scenes
        self.run_config = run_config  # the run's RunConfig: random test scenes like the ones it was trained on
        self._model_lock = threading.Lock()
        self._scene_lock = threading.Lock()
        self._scenes: SceneBank | None = None
        self._scene_error: str | None = None
        self._decode_slots = threading.BoundedSemaphore(DECODES_AT_ONCE)

    # -------------------------------------------------------------------------------------------- helpers
    @property
    def size(self) -> int:
        return self.config.image_size

    def pixels(self, body: dict) -> torch.Tensor:
        """The ``pixels`` of a request: image_size^2 integers 0..255, row by row -> (1, 1, H, W) in [0, 1]."""
        values = body.get("pixels")
        n = self.size * self.size
        if not isinstance(values, list) or len(values) != n:
            got = f"a list of {len(values)}" if isinstance(values, list) else type(values).__name__
            raise RequestError(f"'pixels' must be a list of {n} integers 0..255 (a {self.size}x{self.size} image, "
                               f"row by row), got {got}")
        if not all(type(v) is int and 0 <= v <= 255 for v in values):
            bad = next(v for v in values if not (type(v) is int and 0 <= v <= 255))
            raise RequestError(f"'pixels' must hold integers 0..255, found {bad!r}")
        a = np.asarray(values, dtype=np.float32).reshape(1, 1, self.size, self.size) / 255.0
        return torch.from_numpy(a)

    def info(self) -> dict:
        cfg = self.config
        return {"name": self.name, "model": cfg.architecture, "image_size": cfg.image_size,
                "window_size": cfg.window_size, "max_steps": cfg.max_steps, "z_what_dim": cfg.z_what_dim,
                "dair": cfg.dair,
                "scale_prior": [cfg.scale_prior_mean, cfg.scale_prior_std],
                "shift_prior": [cfg.shift_prior_mean, cfg.shift_prior_std],
                "limits": {"body_bytes": MAX_BODY_BYTES, "image_pixels": MAX_IMAGE_PIXELS,
                           "samples": MAX_SAMPLES, "scale": list(SCALE_RANGE), "shift": list(SHIFT_RANGE),
                           "image_formats": list(IMAGE_FORMATS)}}

    # ------------------------------------------------------------------------------------------ decompose
    def infer(self, x: torch.Tensor) -> dict:
        """AIR.infer on one image (1, 1, H, W): count, every step's window, glimpse and drawing."""
        cfg = self.config
        with self._model_lock:
            r = self.model.infer(x)
            where = r.z_where[0]  # the present slots' z_where, in slot order
            glimpses = (attention.crop(x.expand(len(where), -1, -1, -1), where, cfg.window_size, cfg.min_zoom)
                        if len(where) else None)
        steps, found = [], 0
        for k in range(cfg.max_steps):
            present = bool(r.z_pres[0, k] > 0)
            step = {"step": k + 1, "present": present, "presence_prob": round(float(r.pres_probs[0, k]), 4),
                    "box": _round(r.step_boxes[0, k], 3)}
            if present:  # (AIR's present steps come first; the grid model's present cells lie anywhere)
                step["crop"] = _u8(glimpses[found])
                step["window"] = _u8(r.step_windows[0, k])
                found += 1
            steps.append(step)
        return {"count": int(r.counts[0]), "boxes": [_round(b, 3) for b in r.boxes[0]],
                "z_where": [_round(w, 4) for w in r.z_where[0]], "steps": steps,
                "reconstruction": _u8(r.reconstruction[0]), "pixels": _u8(x[0])}

    def upload(self, data: bytes, name: str, invert: str) -> dict:
        """An uploaded image file (bytes) -> the model's input (grey, light on dark, its size) and infer().
        At most DECODES_AT_ONCE uploads are decoded at a time, each shrunk inside Pillow (8-bit) to at most
        SHRINK_FACTOR x the model's side first, so memory does not grow with the number of uploads or with
        the image's shape."""
        from ..data.images import INVERT_CHOICES, prepare, read_image_bytes

        if invert not in INVERT_CHOICES:
            raise RequestError(f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
        with self._decode_slots:
            src = read_image_bytes(data, name, max_pixels=MAX_IMAGE_PIXELS, max_side=SHRINK_FACTOR * self.size)
            prep = prepare(src, self.size, invert)
        x = torch.from_numpy(np.round(prep.image * 255.0) / 255.0).float()[None, None]
        out = self.infer(x)
        out["source"] = {"name": name, "width": src.width, "height": src.height, "inverted": prep.inverted}
        return out

    def scene(self, seed: int | None) -> dict:
        """One held-out scene (pixels, true count, true boxes), chosen by ``seed`` (random when None)."""
        bank = self._scene_bank()
        seed = secrets.randbelow(2 ** 31) if seed is None else seed
        i = int(np.random.default_rng(seed).integers(len(bank.images)))
        boxes = bank.boxes[i]
        return {"index": i, "seed": seed, "source": bank.source, "pixels": bank.images[i].ravel().tolist(),
                "true_count": int(bank.counts[i]), "true_boxes": [_round(b, 2) for b in boxes if (b >= 0).all()]}

    def _scene_bank(self) -> SceneBank:
        with self._scene_lock:
            if self._scenes is None and self._scene_error is None:
                try:
                    self._scenes = self._load_scenes()
                except AIRError as e:
                    self._scene_error = str(e)
            if self._scenes is None:
                raise RequestError(f"no test scenes to show: {self._scene_error}", status=503)
            return self._scenes

    def _load_scenes(self) -> SceneBank:
        from ..data import SceneConfig, Scenes, generate_scenes, make_scenes
        from ..data.registry import scene_dataset

        size = self.size
        if self.scenes_path is not None:
            s = Scenes.load(self.scenes_path)
            if s.images.shape[1:] != (size, size):
                raise DataError(f"{self.scenes_path}: scenes are {s.images.shape[1]}x{s.images.shape[2]}, the model "
                                f"works on {size}x{size}")
            return SceneBank(s.images, s.counts, s.boxes, str(self.scenes_path))
        from ..data.mnist import load_items

        rc = self.run_config
        if rc is not None and rc.train.dataset != "files":  # scenes like the run's held-out ones
            from ..data.datasets import scene_config

            config = dataclasses.replace(scene_config(rc, "test"), seed=0)
        else:  # no run configuration, or a run on the user's own (uncounted) images: multi-MNIST
            config = SceneConfig(canvas_size=size, seed=0)
        d = scene_dataset(config.dataset)
        if d.items is None:  # drawn: nothing to read
            s = make_scenes("test", N_SCENES, config)
            return SceneBank(s.images, s.counts, s.boxes, f"{N_SCENES} {d.title} scenes")
        # reads only, writes nothing
        items, labels = load_items(d.items, "test", download=False, write_cache=False)
        s = generate_scenes(items, labels, N_SCENES, config, split="test")
        return SceneBank(s.images, s.counts, s.boxes, f"{N_SCENES} scenes built from {d.source} test {d.noun}")

    # ------------------------------------------------------------------------------------------ transform
    def transform(self, x: torch.Tensor, scale: float, shift_x: float, shift_y: float) -> dict:
        """Crop the window z_where = (scale, x, y) with the model's attention.crop and draw it back with
        attention.place (its inverse), as the guide and the decoder do."""
        cfg = self.config
        z_where = torch.tensor([[scale, shift_x, shift_y]], dtype=torch.float32)
        with self._model_lock:  # pure functions, but keep the model's config and torch threads to one request
            glimpse = attention.crop(x, z_where, cfg.window_size, cfg.min_zoom)
            placed = attention.place(glimpse, z_where, cfg.image_size, cfg.min_zoom)
        box = attention.where_to_boxes(z_where, cfg.image_size, cfg.min_zoom)[0]
        return {"z_where": [scale, shift_x, shift_y], "box": _round(box, 3),
                "window_pixels": round(cfg.image_size / abs(scale), 3),
                "crop_theta": _round(attention.crop_theta(z_where, cfg.min_zoom)[0], 4),
                "place_theta": _round(attention.place_theta(z_where, cfg.min_zoom)[0], 4),
                "crop": _u8(glimpse[0]), "placed": _u8(placed[0]), "pixels": _u8(x[0])}

    # ------------------------------------------------------------------------------------------- generate
    def generate(self, n: int, objects: int | None, seed: int | None) -> dict:
        """``n`` scenes from the prior, ``objects`` objects each (or counts from the count prior)."""
        seed = secrets.randbelow(2 ** 31) if seed is None else seed
        generator = torch.Generator().manual_seed(seed)
        with self._model_lock:
            images, z_pres, boxes = (t.cpu() for t in self.model.sample_prior(n, num_objects=objects,
                                                                              generator=generator))
        scenes = []
        for i in range(n):
            present = np.flatnonzero(z_pres[i].numpy() > 0)
            scenes.append({"pixels": _u8(images[i]), "count": len(present),
                           "boxes": [{"step": int(k) + 1, "box": _round(boxes[i, k], 3)} for k in present]})
        return {"seed": seed, "objects": objects, "scenes": scenes}
