"""Reading the images a user hands to ``air infer``: image files, folders and arrays, made fit for the model.

A model only understands what it was trained on: square grey images of its ``image_size``, values in
[0, 1], light digits on a dark background. Users have photos, scans and arrays of every kind, so every
input goes through the same documented steps (:func:`prepare`):

1. **Colour -> grey** by luminance (ITU-R 601: ``L = 0.299 R + 0.587 G + 0.114 B``, what Pillow's "L" mode
   does). An alpha channel is composited onto black (transparent = background).
2. **Value range -> [0, 1]**: integer images are divided by their type's maximum (255 for 8-bit, 65535 for
   16-bit); float arrays already in [0, 1] are kept, float arrays with values up to 255 are divided by 255;
   anything else (negative, above 255, NaN or infinite) is an error naming the file.
3. **Dark-on-light -> light-on-dark** (``invert="auto"``, the default): if the image's border is mostly
   bright (mean of the outermost pixels > 0.5) it is a dark drawing on paper and is inverted; ``"always"``
   and ``"never"`` override the guess.
4. **Other sizes**: the image is padded with background to a square (centred, aspect ratio kept) and resized
   (bilinear, anti-aliased when shrinking) to the model's size. Boxes are mapped back, so they are reported in
   the pixels of the ORIGINAL image (``x_min, y_min, x_max, y_max``, exclusive max edges; they may extend past
   the image edge when the model's window does).

Every problem (missing path, empty or truncated file, a text file named .png, an empty folder, an array of
the wrong rank, NaN) is a :class:`~attend_infer_repeat.errors.DataError` whose message names the file.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, InputError

#: File name endings read as images with Pillow (anything Pillow opens works when named explicitly).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
ARRAY_SUFFIXES = (".npy", ".npz")
INVERT_CHOICES = ("auto", "always", "never")


@dataclass
class SourceImage:
    """One input image as read: ``pixels`` (H, W) float64 in [0, 1] (grey, before inversion and resizing),
    ``name`` says where it came from (``file.png`` or ``arrays.npy[3]``)."""

    name: str
    pixels: np.ndarray


@dataclass
class Prepared:
    """An image made fit for the model, and how to map the model's pixels back to the original's:
    ``original = model_px / scale - (pad_x, pad_y)``."""

    image: np.ndarray  # (size, size) float32 in [0, 1], light on dark
    inverted: bool
    scale: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes) -> np.ndarray:
        """Boxes (n, 4) in model pixels -> the same boxes in the original image's pixels."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / self.scale
        return b - np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])


def _to_unit_range(a: np.ndarray, name: str) -> np.ndarray:
    """Step 2 of the module docstring: any numeric array -> float64 in [0, 1], or a DataError naming ``name``."""
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if a.dtype.kind in "iu":
        if a.size and a.min() < 0:
            raise DataError(f"{name}: negative pixel values (min {a.min()}); images must be non-negative")
        top = 255 if a.dtype.itemsize == 1 or (a.size and a.max() <= 255) else np.iinfo(a.dtype).max
        return a.astype(np.float64) / top
    if a.dtype.kind == "f":
        a = a.astype(np.float64)
        if a.size and not np.isfinite(a).all():
            raise DataError(f"{name}: contains NaN or infinite values")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"{name}: pixel values must lie in [0, 1] or [0, 255], got min {lo:.3g}, max {hi:.3g}")
        return a / 255.0 if hi > 1 else a
    raise DataError(f"{name}: pixel type {a.dtype} is not a number type")


def _grey_from_array(a: np.ndarray, name: str) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) or (1, H, W) -> (H, W) grey in [0, 1] (luminance; alpha composited on black)."""
    if a.ndim == 3 and a.shape[0] == 1 and a.shape[-1] not in (1, 3, 4):
        a = a[0]
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = _to_unit_range(a, name)
        if a.shape[-1] == 1:
            return a[..., 0]
        grey = a[..., :3] @ np.array([0.299, 0.587, 0.114])
        return grey * a[..., 3] if a.shape[-1] == 4 else grey
    if a.ndim != 2:
        raise DataError(f"{name}: an image must be (H, W), (H, W, C) with C in 1, 3, 4, or (1, H, W); "
                        f"got shape {a.shape}")
    return _to_unit_range(a, name)


def read_image_file(path: str | os.PathLike, max_pixels: int | None = None) -> SourceImage:
    """One image file (PNG, JPEG, ... anything Pillow reads) -> grey pixels in [0, 1].
    ``max_pixels``: refuse images with more pixels than this (checked before decoding)."""
    path = Path(path)
    name = str(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{name}: the file is empty")
        with open(path, "rb") as f:
            return _decode_image(f, name, max_pixels)
    except OSError as e:
        raise DataError(f"{name}: cannot read the file ({type(e).__name__}: {e})") from e


def read_image_bytes(data: bytes, name: str = "upload", max_pixels: int | None = None) -> SourceImage:
    """The bytes of an image file (an upload) -> grey pixels in [0, 1]; nothing touches the disk.
    ``name`` appears in error messages; ``max_pixels`` as in :func:`read_image_file`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError(f"{name}: the file is empty")
    return _decode_image(io.BytesIO(data), name, max_pixels)


def _decode_image(fp, name: str, max_pixels: int | None) -> SourceImage:
    """Decode an open image file with Pillow (size checked first, then decoded in full)."""
    try:
        with Image.open(fp) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise DataError(f"{name}: the image is {w}x{h} ({w * h:,} pixels); the limit is {max_pixels:,} "
                                "pixels: make it smaller first")
            im.load()  # decode now: a truncated file fails here, not later
            if im.mode == "P":
                im = im.convert("RGBA")
            elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode == "LA":
                im = im.convert("RGBA")
            arr = np.array(im)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{name}: image too large to read safely ({e})") from e
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (not in any format Pillow knows: PNG, JPEG, GIF, BMP, "
                        "TIFF, WebP ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {e})") from e
    if im.mode.startswith("I;16") or arr.dtype == np.uint16:
        arr = arr.astype(np.uint16)
    elif im.mode == "I":
        arr = arr.astype(np.int64)
    elif im.mode == "F":
        arr = arr.astype(np.float64)
    return SourceImage(name, _grey_from_array(arr, name))


def read_array_file(path: str | os.PathLike) -> list[SourceImage]:
    """A ``.npy`` array or an ``.npz`` archive (its ``images`` key, else its only array) of one image (H, W)
    or a batch: (N, H, W), (N, 1, H, W) or (N, H, W, C). Integer or float values (see the module docstring)."""
    path = Path(path)
    name = str(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{name}: the file is empty")
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = loaded.files
                if "images" in keys:
                    key = "images"
                elif len(keys) == 1:
                    key = keys[0]
                else:
                    raise DataError(f"{name}: an .npz needs an 'images' array or exactly one array; it has "
                                    f"{sorted(keys)}")
                a = loaded[key]
        else:
            a = loaded
    except DataError:
        raise
    except Exception as e:  # not an npy/zip, truncated, pickled objects (allow_pickle=False) ...
        raise DataError(f"{name}: not a readable .npy/.npz array ({type(e).__name__}: {e})") from e
    if a.dtype.kind not in "biuf":
        raise DataError(f"{name}: array of {a.dtype}, expected numbers")
    if a.ndim == 2:
        batch = a[None]
    elif a.ndim == 3:
        # (N, H, W) is the common case; a single colour image (H, W, 3|4) is read as one image
        batch = a[None] if a.shape[-1] in (3, 4) and a.shape[0] > 4 and a.shape[1] > 4 else a
    elif a.ndim == 4:
        if a.shape[1] == 1:
            batch = a[:, 0]
        elif a.shape[-1] in (1, 3, 4):
            batch = a
        else:
            raise DataError(f"{name}: a 4-d array must be (N, 1, H, W) or (N, H, W, C); got shape {a.shape}")
    else:
        raise DataError(f"{name}: expected an image (H, W) or a batch (N, H, W), (N, 1, H, W), (N, H, W, C); "
                        f"got an array of shape {a.shape}")
    if len(batch) == 0:
        raise DataError(f"{name}: the array holds no images (shape {a.shape})")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = int(np.flatnonzero(~np.isfinite(batch.reshape(len(batch), -1)).all(1))[0])
        raise DataError(f"{name}: image {bad} contains NaN or infinite values")
    return [SourceImage(f"{name}[{i}]", _grey_from_array(batch[i], f"{name}[{i}]")) for i in range(len(batch))]


def read_inputs(inputs) -> list[SourceImage]:
    """Image files, folders (their image and array files, sorted by name, not recursive) and ``.npy``/``.npz``
    files -> every image they hold, in order."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[SourceImage] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in
                           IMAGE_SUFFIXES + ARRAY_SUFFIXES)
            if not files:
                raise DataError(f"{path}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)}) or "
                                "arrays (.npy, .npz)")
            for f in files:
                out.extend(read_inputs([f]))
        elif not path.exists():
            raise DataError(f"{path}: no such file or folder")
        elif path.suffix.lower() in ARRAY_SUFFIXES:
            out.extend(read_array_file(path))
        else:
            out.append(read_image_file(path))
    if not out:
        raise DataError("no input images given")
    return out


def prepare(pixels: np.ndarray, size: int, invert: str = "auto") -> Prepared:
    """Steps 3 and 4 of the module docstring: invert if dark-on-light, pad to a centred square, resize to
    ``size`` x ``size``; returns the image and the mapping back to the original pixels."""
    if invert not in INVERT_CHOICES:
        raise InputError(f"invert must be one of {INVERT_CHOICES}, got {invert!r}")
    a = np.asarray(pixels, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"pixels must be a non-empty (H, W) array, got shape {a.shape}")
    h, w = a.shape
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    inverted = invert == "always" or (invert == "auto" and float(border.mean()) > 0.5)
    if inverted:
        a = 1.0 - a
    side = max(h, w)
    pad_x, pad_y = (side - w) // 2, (side - h) // 2
    square = np.zeros((side, side), dtype=np.float32)
    square[pad_y:pad_y + h, pad_x:pad_x + w] = a
    if side != size:
        square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR))
    return Prepared(np.clip(square, 0.0, 1.0).astype(np.float32), inverted, size / side, float(pad_x), float(pad_y))
