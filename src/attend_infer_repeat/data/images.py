"""Reading the images a user hands to ``air infer``: image files, folders and arrays, made fit for the model.

A model only understands what it was trained on: square grey images of its ``image_size``, values in
[0, 1], light digits on a dark background. Users have photos, scans and arrays of every kind, so every
input goes through the same documented steps (:func:`prepare`):

1. **Colour -> grey** by luminance (ITU-R 601: ``L = 0.299 R + 0.587 G + 0.114 B``, Pillow's "L" mode, done
   inside Pillow for 8-bit images). An alpha channel is composited onto black (transparent = background):
   ``L * A / 255``, rounded.
2. **Value range -> [0, 1]**: integer images are divided by their type's maximum (255 for 8-bit, 65535 for
   16-bit); float arrays already in [0, 1] are kept, float arrays with values up to 255 are divided by 255;
   anything else (negative, above 255, NaN or infinite) is an error naming the file.
3. **Dark-on-light -> light-on-dark** (``invert="auto"``, the default): if the image's border is mostly
   bright (mean of the outermost pixels > 0.5) it is a dark drawing on paper and is inverted; ``"always"``
   and ``"never"`` override the guess.
4. **Other sizes**: the image is padded with background to a square (centred, aspect ratio kept) and resized
   (bilinear, anti-aliased when shrinking) to the model's size. Boxes are mapped back, so they are reported in
   the pixels of the ORIGINAL image (``x_min, y_min, x_max, y_max``, exclusive max edges; they may extend past
   the image edge when the model's window does). The padded square is never built: :func:`prepare` resamples
   the image itself with the weights Pillow's bilinear filter gives the padded square (the same values, to
   float32 rounding), so memory grows with the image and the model's size, not with the square of the
   image's longer side (a 1 x 20000 image costs kilobytes, not gigabytes).

Formats: only :data:`IMAGE_FORMATS` are decoded (Pillow's other plugins, EPS through Ghostscript among them,
are never reached, whatever a file is called). Readers that need only the model's input (``air serve``) pass
``max_side``: the image is then shrunk inside Pillow, while still 8-bit, before any float copy is made.

Every problem (missing path, empty or truncated file, a text file named .png, an empty folder, an array of
the wrong rank, NaN) is a :class:`~attend_infer_repeat.errors.DataError` whose message names the file.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, InputError

#: File name endings read as images in folders (a file named explicitly is read whatever its name, if its
#: content is in one of IMAGE_FORMATS).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
#: The Pillow formats decoded (``Image.open(formats=...)``): these and no other plugin, for files and uploads.
#: PPM is Pillow's reader of .pgm/.ppm; JPEG includes the MPO pictures phones write.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
FORMAT_NAMES = "PNG, JPEG, GIF, BMP, WebP, TIFF, PGM/PPM"
_HIGH_BIT_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")
#: max_side shrinking: Pillow first box-averages by a whole factor when the image is more than this many times
#: too big (its bilinear filter's table would take 16 bytes per input pixel of a side: 256 MB for a
#: 16,000,000 x 1 image), then resamples the rest of the way; a 4000-pixel side shrunk to 800 is not reduced.
REDUCING_GAP = 8.0
ARRAY_SUFFIXES = (".npy", ".npz")
INVERT_CHOICES = ("auto", "always", "never")


@dataclass
class SourceImage:
    """One input image as read: ``pixels`` (H, W) float32 in [0, 1] (grey, before inversion and resizing),
    ``name`` says where it came from (``file.png`` or ``arrays.npy[3]``). ``width`` x ``height`` is the
    image's own size: ``pixels`` is smaller when it was read with ``max_side`` (shrunk inside Pillow), and
    :func:`prepare` then still pads and maps boxes in the original's pixels. ``border_mean`` is the mean of
    the original's outermost pixels (the "auto" inversion guess), kept because a shrunk copy's border is not
    the original's."""

    name: str
    pixels: np.ndarray
    width: int = 0
    height: int = 0
    border_mean: float | None = None

    def __post_init__(self):
        if not self.width or not self.height:
            self.height, self.width = (int(n) for n in np.shape(self.pixels)[:2])


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
    """Step 2 of the module docstring: any numeric array -> float32 in [0, 1], or a DataError naming ``name``."""
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype.kind in "iu":
        if a.size and a.min() < 0:
            raise DataError(f"{name}: negative pixel values (min {a.min()}); images must be non-negative")
        top = 255 if a.dtype.itemsize == 1 or (a.size and a.max() <= 255) else np.iinfo(a.dtype).max
        if a.dtype.itemsize > 2:
            return (a / np.float64(top)).astype(np.float32)
        out = a.astype(np.float32)
        out /= np.float32(top)
        return out
    if a.dtype.kind == "f":
        if a.size and not np.isfinite(a).all():
            raise DataError(f"{name}: contains NaN or infinite values")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"{name}: pixel values must lie in [0, 1] or [0, 255], got min {lo:.3g}, max {hi:.3g}")
        return (a / 255.0).astype(np.float32) if hi > 1 else a.astype(np.float32)
    raise DataError(f"{name}: pixel type {a.dtype} is not a number type")


def _grey_from_array(a: np.ndarray, name: str) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) or (1, H, W) -> (H, W) grey in [0, 1] (luminance; alpha composited on black)."""
    if a.ndim == 3 and a.shape[0] == 1 and a.shape[-1] not in (1, 3, 4):
        a = a[0]
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = _to_unit_range(a, name)
        if a.shape[-1] == 1:
            return a[..., 0]
        grey = (a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)
        return grey * a[..., 3] if a.shape[-1] == 4 else grey
    if a.ndim != 2:
        raise DataError(f"{name}: an image must be (H, W), (H, W, C) with C in 1, 3, 4, or (1, H, W); "
                        f"got shape {a.shape}")
    return _to_unit_range(a, name)


def read_image_file(path: str | os.PathLike, max_pixels: int | None = None,
                    max_side: int | None = None) -> SourceImage:
    """One image file (one of :data:`IMAGE_FORMATS`) -> grey pixels in [0, 1].
    ``max_pixels``: refuse images with more pixels than this (checked before decoding); ``max_side``: shrink
    (inside Pillow, bilinear) so that the longer side is at most this, for readers that only need
    :func:`prepare`'s output."""
    path = Path(path)
    name = str(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{name}: the file is empty")
        with open(path, "rb") as f:
            return _decode_image(f, name, max_pixels, max_side)
    except OSError as e:
        raise DataError(f"{name}: cannot read the file ({type(e).__name__}: {e})") from e


def read_image_bytes(data: bytes, name: str = "upload", max_pixels: int | None = None,
                     max_side: int | None = None) -> SourceImage:
    """The bytes of an image file (an upload) -> grey pixels in [0, 1]; nothing touches the disk.
    ``name`` appears in error messages; ``max_pixels`` and ``max_side`` as in :func:`read_image_file`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise DataError(f"{name}: the file is empty")
    return _decode_image(io.BytesIO(data), name, max_pixels, max_side)


def _grey_8bit(im: Image.Image) -> Image.Image:
    """An 8-bit Pillow image of any mode -> mode "L" (luminance; alpha composited on black), all inside Pillow.
    ``im`` is closed (its memory released) as soon as it is no longer needed, unless it is returned."""
    mode = im.mode
    if mode == "L":
        return im
    if mode == "LA":
        grey, alpha = im.getchannel("L"), im.getchannel("A")
    elif mode in ("RGBA", "RGBa", "PA", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        if rgba is not im:
            im.close()
        grey, alpha = rgba.convert("L"), rgba.getchannel("A")
        rgba.close()
    else:  # 1, RGB, RGBX, P without transparency, CMYK, YCbCr, LAB, HSV
        rgb = im if mode in ("1", "RGB", "RGBX") else im.convert("RGB")
        grey = rgb.convert("L")
        rgb.close()
        im.close()
        return grey
    im.close()
    on_black = Image.new("L", grey.size, 0)
    on_black.paste(grey, (0, 0), alpha)  # L * A / 255, rounded (ImageChops.multiply would round down)
    return on_black


def _border_mean(a: np.ndarray) -> float:
    """Mean of an image's outermost rows and columns (corners counted twice, as :func:`prepare` always did),
    summed in float64 without copying the strips (a 16,000,000 x 1 image's rows are its whole self)."""
    strips = (a[0], a[-1], a[:, 0], a[:, -1])
    return float(sum(np.sum(strip, dtype=np.float64) for strip in strips) / sum(strip.size for strip in strips))


def _shrunk_size(w: int, h: int, max_side: int | None) -> tuple[int, int] | None:
    if max_side is None or max(w, h) <= max_side:
        return None
    r = max_side / max(w, h)
    return max(1, round(w * r)), max(1, round(h * r))


def _decode_image(fp, name: str, max_pixels: int | None, max_side: int | None = None) -> SourceImage:
    """Decode an open image file with Pillow (format and size checked first, then decoded in full), turn it
    grey inside Pillow (8-bit images) and, with ``max_side``, shrink it there before the float copy."""
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise InputError(f"max_side must be a positive integer or None, got {max_side!r}")
    try:
        with Image.open(fp, formats=IMAGE_FORMATS) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise DataError(f"{name}: the image is {w}x{h} ({w * h:,} pixels); the limit is {max_pixels:,} "
                                "pixels: make it smaller first")
            im.load()  # decode now: a truncated file fails here, not later
            small = _shrunk_size(w, h, max_side)
            if im.mode in _HIGH_BIT_MODES:  # 16/32-bit and float images: their own value range (step 2)
                arr = np.asarray(im)
                mode, fmt = im.mode, im.format
            else:
                grey = _grey_8bit(im)
                border = sum(int(np.sum(np.asarray(grey.crop(box)), dtype=np.int64)) for box in
                             ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h))) / (255.0 * 2 * (w + h))
                if small is not None:
                    grey = grey.resize(small, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
                pixels = np.array(grey, dtype=np.float32)
                grey.close()
                pixels /= np.float32(255)
                return SourceImage(name, pixels, w, h, border)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{name}: image too large to read safely ({e})") from e
    except UnidentifiedImageError:
        raise DataError(f"{name}: not a readable image (not in one of the accepted formats: {FORMAT_NAMES})") \
            from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {e})") from e
    # an image file says how wide its samples are, so its full range is known (an array's is guessed, step 2):
    # 16-bit samples are divided by 65535 even when a dark image uses only the values up to 255. Pillow opens
    # 16-bit PNGs as mode I too; other mode I files (TIFF) hold signed 32-bit samples.
    if mode.startswith("I;16") or arr.dtype == np.uint16 or mode == "I":
        top = 65535 if mode != "I" or fmt == "PNG" else 2**31 - 1
        if arr.size and arr.min() < 0:
            raise DataError(f"{name}: negative pixel values (min {arr.min()}); images must be non-negative")
        arr = (arr / np.float64(top)).astype(np.float32)
    elif mode == "F":
        arr = arr.astype(np.float32, copy=False)
    pixels = _grey_from_array(arr, name)
    del arr
    border = _border_mean(pixels)
    if small is not None:
        pixels = np.asarray(Image.fromarray(pixels).resize(small, Image.Resampling.BILINEAR,
                                                           reducing_gap=REDUCING_GAP), np.float32)
    return SourceImage(name, pixels, w, h, border)


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
            try:
                files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in
                               IMAGE_SUFFIXES + ARRAY_SUFFIXES)
            except OSError as e:
                raise DataError(f"{path}: cannot read the folder ({e.strerror or e})") from e
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


def _resample_taps(n_full: int, n: int, pad: int, side: int, size: int):
    """For each of ``size`` outputs along one axis: the slice [j0, j1) of the image's ``n`` samples it reads and
    their weights, as Pillow's bilinear filter (anti-aliased when shrinking) resizes a padded square of
    ``side`` pixels to ``size`` in which the image's ``n_full`` pixels start at ``pad``. Pillow divides by the
    sum of the filter's weights over the square's whole pixel grid (padding included, clipped at its edges);
    so do these. ``n < n_full`` (an image shrunk inside Pillow first): sample j stands for the ``n_full / n``
    original pixels around its centre. With ``n == n_full`` the weights are exactly Pillow's. A generator:
    only one output's weights exist at a time."""
    scale = side / size
    fscale = max(scale, 1.0)
    support = fscale  # the bilinear filter's support is 1
    step = n_full / n
    for out in range(size):
        centre = (out + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), side)
        grid = np.arange(lo, hi, dtype=np.float64)
        total = float(np.maximum(0.0, 1.0 - np.abs((grid + 0.5 - centre) / fscale)).sum())
        j0 = max(int(math.floor((centre - support - pad) / step - 0.5)), 0)
        j1 = min(int(math.ceil((centre + support - pad) / step - 0.5)) + 1, n)
        if j1 <= j0 or total <= 0.0:
            yield 0, 0, np.zeros(0)
            continue
        at = pad + (np.arange(j0, j1, dtype=np.float64) + 0.5) * step
        yield j0, j1, np.maximum(0.0, 1.0 - np.abs((at - centre) / fscale)) * (step / total)


def prepare(pixels, size: int, invert: str = "auto") -> Prepared:
    """Steps 3 and 4 of the module docstring: invert if dark-on-light, pad to a centred square, resize to
    ``size`` x ``size``; returns the image and the mapping back to the original pixels.

    ``pixels``: an (H, W) array in [0, 1] or a :class:`SourceImage` (its ``pixels`` may be a copy shrunk by
    ``max_side``; the padding, the inversion guess and the mapping then follow the original's size and
    border). The padded square is never built: each axis is resampled with the weights the square would get
    (:func:`_resample_taps`, horizontal pass first, float32 between the passes, as Pillow does), so the
    result equals Pillow's resize of the square to float32 rounding, in memory of the order of
    H x W + H x size, whatever the aspect ratio."""
    if invert not in INVERT_CHOICES:
        raise InputError(f"invert must be one of {INVERT_CHOICES}, got {invert!r}")
    border = None
    if isinstance(pixels, SourceImage):
        border, h, w = pixels.border_mean, pixels.height, pixels.width
        pixels = pixels.pixels
    a = np.asarray(pixels)
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"pixels must be a non-empty (H, W) array, got shape {a.shape}")
    if border is None:
        h, w = a.shape
        border = _border_mean(a)
    inverted = invert == "always" or (invert == "auto" and border > 0.5)
    a = np.asarray(a, dtype=np.float32)
    if inverted:
        a = np.float32(1.0) - a
    side = max(h, w)
    pad_x, pad_y = (side - w) // 2, (side - h) // 2
    if side == size and a.shape == (h, w):
        out = np.zeros((size, size), dtype=np.float32)
        out[pad_y:pad_y + h, pad_x:pad_x + w] = a
    else:
        across = np.zeros((a.shape[0], size), dtype=np.float32)  # sums in float64, kept in float32
        for k, (j0, j1, weights) in enumerate(_resample_taps(w, a.shape[1], pad_x, side, size)):
            if j1 > j0:
                across[:, k] = a[:, j0:j1] @ weights
        out = np.zeros((size, size), dtype=np.float64)
        for k, (j0, j1, weights) in enumerate(_resample_taps(h, a.shape[0], pad_y, side, size)):
            if j1 > j0:
                out[k] = weights @ across[j0:j1]
    return Prepared(np.clip(out, 0.0, 1.0).astype(np.float32), inverted, size / side, float(pad_x), float(pad_y))
