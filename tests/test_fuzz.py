"""Fuzzing the public entry points with malformed and unusual-but-valid input. Every case ends in one of two ways,
and both are checked:

* refused: the project's own error (InputError for arguments, DataError for files), a one-line message that says
  what was wrong (and, for files, names the file) — never a hang, a crash deep inside torch or a bare traceback;
* accepted: the answer is the right one. ``AIR.infer`` of any accepted form of an image batch gives what it gives
  for the plain float tensor (B, 1, H, W) of the same pixels; an image or array file reads to the pixels an
  independent decode of it holds (float32 (H, W) in [0, 1]); an IDX file to the array its header describes;
  a damaged scene file that still loads to exactly the scenes that were saved.

Deterministic (seeded); the number of cases of each kind is printed with -s and asserted."""
from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from helpers import idx_bytes
from PIL import Image

from attend_infer_repeat import DataError, InputError
from attend_infer_repeat.data import SceneConfig, Scenes, generate_scenes
from attend_infer_repeat.data.images import read_inputs
from attend_infer_repeat.data.mnist import read_idx
from attend_infer_repeat.model import build_model

SIZE = 20  # the tiny model's image size


def assert_clear(error: Exception, kind: type, *mentions: str) -> None:
    """A refusal: the project's error type, one line, saying at least one of the things wrong with the input."""
    message = str(error)
    assert isinstance(error, kind), f"{type(error).__name__} instead of {kind.__name__}: {message}"
    assert message.strip() and "\n" not in message, f"the message must be one line: {message!r}"
    if mentions:
        assert any(m in message for m in mentions), f"{message!r} says none of {mentions}"


# ------------------------------------------------------------------------------------------------ AIR.infer
def reference_pixels(case) -> torch.Tensor:
    """The plain float32 tensor (B, 1, H, W) in [0, 1] of an accepted input's pixels, by the documented rules:
    uint8 / 255, bool as 0/1, floats as they are."""
    if isinstance(case, torch.Tensor):
        v = case.detach().to(torch.float64).numpy() / (255 if case.dtype == torch.uint8 else 1)
    else:
        v = case.astype(np.float64) / (255 if case.dtype == np.uint8 else 1)
    t = torch.tensor(v, dtype=torch.float32)
    return t[:, None] if t.dim() == 3 else t


def problems(case) -> list[str]:
    """What an AIR.infer input has wrong (by the documented contract), as phrases its error may use."""
    if not isinstance(case, (np.ndarray, torch.Tensor)):
        return ["must be a torch tensor or numpy array"]
    found = []
    if isinstance(case, torch.Tensor):
        if not (case.is_floating_point() or case.dtype in (torch.uint8, torch.bool)):
            found.append("dtype")
        a = case.detach().to(torch.float64).numpy() if case.is_floating_point() else case.detach().numpy()
    else:
        a = case
        if a.dtype.kind not in "fb" and a.dtype != np.uint8:
            found.append("dtype")
    if a.ndim == 2:
        found.append("add a batch dimension")
    elif a.ndim not in (3, 4):
        found.append("dimensions")
    else:
        if a.ndim == 4 and a.shape[1] != 1:
            found.append("channels")
        if a.shape[-2:] != (SIZE, SIZE):
            found.append(f"trained on {SIZE}x{SIZE}")
    if not found and a.dtype.kind == "f" and a.size:
        if not np.isfinite(a).all():
            found.append("NaN or infinite")
        elif a.min() < 0 or a.max() > 1:
            found.append("must lie in [0, 1]")
    return found


def infer_cases(rng: np.random.Generator) -> list:
    """Malformed, edge-case and well-formed inputs for AIR.infer on a 20x20 model."""
    cases = [None, 3, "images", [[0.5]], {"x": 1}, np.zeros(0), np.zeros((0, 20, 20)), torch.zeros(0, 1, 20, 20)]
    shapes = [(20,), (20, 20), (1, 20), (2, 19, 20), (2, 20, 21), (2, 2, 20, 20), (2, 3, 20, 20),
              (1, 1, 1, 20, 20), (4, 20, 20, 1), (23, 20, 20), (1, 1, 200, 200), (2, 1, 20, 20)]
    dtypes = [np.float32, np.float64, np.float16, np.uint8, np.int32, np.int64, np.bool_, np.complex64]
    for shape in shapes:
        for dtype in dtypes:
            a = rng.random(shape)
            if dtype in (np.uint8, np.int32, np.int64):
                cases.append((a * 255).astype(dtype))
            elif dtype == np.bool_:
                cases.append(a > 0.5)
            else:
                cases.append(a.astype(dtype))
    for bad in (np.nan, np.inf, -np.inf, -0.1, 1.0001, 255.0, 1e30):
        a = rng.random((3, 20, 20)).astype(np.float32)
        a[1, 5, 5] = bad
        cases += [a, torch.from_numpy(a), torch.from_numpy(a)[:, None]]
    edge = np.zeros((3, 20, 20), np.float32)
    edge[0] = 1.0  # the ends of the range are allowed
    edge[1, ::2] = 1.0
    cases += [edge, torch.from_numpy(edge).double()]
    cases.append(torch.rand(2, 20, 20, dtype=torch.float64).requires_grad_())
    cases.append(torch.rand(2, 40, 20)[:, ::2])  # non-contiguous views ...
    cases.append(torch.rand(2, 20, 20).transpose(1, 2))
    cases.append(np.asfortranarray(rng.random((2, 20, 20))))
    cases.append((rng.random((3, 20, 20, 2)) * 255).astype(np.uint8)[..., 1])
    cases.append(torch.from_numpy((rng.random((2, 1, 20, 20)) * 255).astype(np.uint8)))
    cases.append(torch.from_numpy(rng.random((2, 20, 20)) > 0.7))
    cases.append(torch.rand(2, 1, 20, 20, dtype=torch.bfloat16))
    for _ in range(30):  # random valid batches in random forms
        b = int(rng.integers(1, 6))
        a = rng.random((b, 20, 20)) ** 3
        form = rng.integers(0, 5)
        a = [a, (a * 255).astype(np.uint8), a.astype(np.float16), a > 0.5, a.astype(np.float32)][form]
        if rng.random() < 0.5:
            a = a[:, None]
        cases.append(torch.from_numpy(np.ascontiguousarray(a)) if rng.random() < 0.5 else a)
    return cases


def assert_same_inference(got, want, where: str) -> None:
    assert torch.equal(got.counts, want.counts), f"{where}: counts {got.counts} != {want.counts}"
    assert torch.equal(got.z_pres, want.z_pres), where
    for name in ("pres_probs", "reconstruction", "step_windows", "step_boxes"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=1e-5,
                                   msg=lambda m, name=name: f"{where}: {name}: {m}")
    for name in ("boxes", "object_boxes", "z_what", "z_where"):
        for i, (g, w) in enumerate(zip(getattr(got, name), getattr(want, name))):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-4,
                                       msg=lambda m, name=name, i=i: f"{where}: {name}[{i}]: {m}")


def assert_well_formed(r, b: int, cfg) -> None:
    n = cfg.max_steps
    assert r.counts.shape == (b,) and r.counts.dtype == torch.int64
    assert r.z_pres.shape == (b, n) and ((r.z_pres == 0) | (r.z_pres == 1)).all()
    assert (r.z_pres[:, 1:] <= r.z_pres[:, :-1]).all(), "z_pres must be ones, then zeros"
    assert torch.equal(r.counts, r.z_pres.sum(1).long())
    assert r.pres_probs.shape == (b, n) and ((r.pres_probs >= 0) & (r.pres_probs <= 1)).all()
    assert r.reconstruction.shape == (b, 1, cfg.image_size, cfg.image_size)
    assert torch.isfinite(r.reconstruction).all()
    for name, width in (("boxes", 4), ("object_boxes", 4), ("z_what", cfg.z_what_dim), ("z_where", 3)):
        parts = getattr(r, name)
        assert len(parts) == b, name
        for i, p in enumerate(parts):
            assert p.shape == (int(r.counts[i]), width) and torch.isfinite(p).all(), name


@pytest.mark.parametrize("architecture", ["air", "grid"])
def test_fuzz_infer(tiny_config, architecture):
    tiny_config = dataclasses.replace(tiny_config, architecture=architecture, grid_size=2)
    model = build_model(tiny_config)
    cases = infer_cases(np.random.default_rng(0))
    answered = refused = 0
    for k, case in enumerate(cases):
        where = f"case {k} ({type(case).__name__} {getattr(case, 'dtype', '')} {tuple(getattr(case, 'shape', ()))})"
        wrong = problems(case)
        try:
            r = model.infer(case, batch_size=7)  # in batches: the answer must not depend on how it is split
        except InputError as e:
            assert wrong, f"{where}: a usable input was refused: {e}"
            assert_clear(e, InputError, *wrong)
            refused += 1
            continue
        assert not wrong, f"{where}: accepted although {wrong}"
        x = reference_pixels(case)
        assert_well_formed(r, x.size(0), tiny_config)
        if x.size(0):
            assert_same_inference(r, model.infer(x), where)
        answered += 1
    print(f"AIR.infer: {len(cases)} cases, {answered} answered as their float pixels are, {refused} refused "
          "with a clear InputError")
    assert len(cases) >= 130 and answered >= 40 and refused >= 60


# ------------------------------------------------------------------------------------- image and array files
LUMA = np.array([0.299, 0.587, 0.114])


def png(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, **kw).save(buf, format="PNG")
    return buf.getvalue()


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def valid_files(rng: np.random.Generator) -> list[tuple[str, bytes, list[np.ndarray], float]]:
    """Well-formed files of every documented kind: (name, bytes, the grey pixels each image must read as by
    the module's rules, tolerance)."""
    u8 = (rng.random((28, 28)) * 255).astype(np.uint8)
    rgb = (rng.random((12, 17, 3)) * 255).astype(np.uint8)
    rgba = (rng.random((9, 9, 4)) * 255).astype(np.uint8)
    u16 = (rng.random((10, 6)) * 65535).astype(np.uint16)
    f01 = rng.random((3, 8, 8)).astype(np.float32)
    f255 = (rng.random((2, 5, 7)) * 255).astype(np.float64)
    f255[:, 0, 0] = 255.0
    bits = rng.random((8, 16)) > 0.5
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    pal_rgb = np.asarray(pal.convert("RGB"), np.float64)
    jpeg = io.BytesIO()
    Image.fromarray(u8).save(jpeg, format="JPEG", quality=95)
    jpeg_grey = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())), np.float64) / 255
    npz = io.BytesIO()
    np.savez(npz, images=f01, other=np.zeros(3))
    exact, luma8 = 1e-6, 0.5 / 255 + 1e-6  # float32 rounding; + Pillow's rounding of 8-bit luminance to a level
    files = [
        ("grey.png", png(u8), [u8 / 255], exact),
        ("rgb.png", png(rgb), [rgb @ LUMA / 255], luma8),
        ("rgba.png", png(rgba), [(rgba[..., :3] @ LUMA / 255) * (rgba[..., 3] / 255)], 2 * luma8),
        ("grey16.png", png(u16), [u16 / 65535], exact),
        ("bits.png", png(bits), [bits.astype(np.float64)], exact),
        ("palette.png", buf.getvalue(), [pal_rgb @ LUMA / 255], luma8),
        ("grey.jpg", jpeg.getvalue(), [jpeg_grey], exact),
        ("f01.npy", npy(f01), list(f01.astype(np.float64)), exact),
        ("f01_channel.npy", npy(f01[:, None]), list(f01.astype(np.float64)), exact),
        ("f255.npy", npy(f255), list(f255 / 255), exact),
        ("u8.npy", npy(np.stack([u8, u8[::-1]])), [u8 / 255, u8[::-1] / 255], exact),
        ("one.npy", npy(u8), [u8 / 255], exact),
        ("colour_batch.npy", npy(np.stack([rgb, rgb])), [rgb @ LUMA / 255] * 2, exact),
        ("rgba.npy", npy(rgba), [(rgba[..., :3] @ LUMA / 255) * (rgba[..., 3] / 255)], exact),
        ("bool.npy", npy(bits[None]), [bits.astype(np.float64)], exact),
        ("arrays.npz", npz.getvalue(), list(f01.astype(np.float64)), exact),
    ]
    return files


def assert_read_well(images, path, what: str) -> None:
    assert len(images) > 0, what
    for k, im in enumerate(images):
        assert str(path) in im.name, f"{what}: image {k} is called {im.name!r}"
        p = im.pixels
        assert isinstance(p, np.ndarray) and p.dtype == np.float32 and p.ndim == 2 and p.size, \
            f"{what}: image {k} is {getattr(p, 'dtype', type(p))} {getattr(p, 'shape', '')}"
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1, f"{what}: image {k} outside [0, 1]"


def pillow_grey(path) -> tuple[list[np.ndarray] | None, float]:
    """An independent decode of an image file ([] if Pillow cannot decode it in full): the luminance of its
    RGB, composited on black where it has alpha; and the tolerance (grey images exactly, colour ones to
    Pillow's rounding of the luminance to an 8-bit level). None: a mode these 8-bit originals only reach by
    damage (then only the invariants are checked)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return None, 0.0
            grey = im.mode in ("L", "1")
            rgba = np.asarray(im.convert("RGBA"), np.float64) / 255
    except Exception:  # noqa: BLE001 - whatever Pillow refuses, read_inputs must refuse too
        return [], 0.0
    return [(rgba[..., :3] @ LUMA) * rgba[..., 3]], 1e-6 if grey else 1 / 255 + 1e-6


def npy_expected(path, original: np.ndarray) -> list[np.ndarray] | str | None:
    """For a damaged .npy of ``original`` (N, H, W) floats: the pixels each image must read as, or the phrase
    its refusal must use, or None where the damage changed the header (then only the invariants are checked)."""
    if path.stat().st_size == 0:
        return "empty"
    try:
        a = np.load(path, allow_pickle=False)
    except Exception:  # noqa: BLE001
        return "not a readable"
    if not isinstance(a, np.ndarray) or a.shape != original.shape or a.dtype != original.dtype:
        return None
    if not np.isfinite(a).all():
        return "NaN or infinite"
    out = []
    for image in a.astype(np.float64):
        if image.min() < 0 or image.max() > 255:
            return "must lie in [0, 1] or [0, 255]"
        out.append(image / 255 if image.max() > 1 else image)
    return out


def corrupt_variants(blob: bytes, rng: np.random.Generator, n: int = 12) -> list[bytes]:
    """Truncations, bit flips, zeroed headers, junk appended/prepended."""
    out = [b"", blob[:1], blob[: len(blob) // 2], blob[:-1], b"\x00" * len(blob), blob + b"junk" * 10,
           b"GARBAGE" + blob]
    for _ in range(n):
        b = bytearray(blob)
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 8))):
            b[i] ^= 1 << int(rng.integers(0, 8))
        out.append(bytes(b))
    return out


def test_fuzz_image_files(tmp_path):
    rng = np.random.default_rng(1)
    valid = valid_files(rng)
    for name, blob, want, tol in valid:  # every documented kind reads to the pixels the rules say
        path = tmp_path / name
        path.write_bytes(blob)
        images = read_inputs([path])
        assert_read_well(images, path, name)
        assert len(images) == len(want), f"{name}: {len(images)} images, expected {len(want)}"
        for k, (im, w) in enumerate(zip(images, want)):
            assert im.pixels.shape == w.shape, f"{name}[{k}]: shape {im.pixels.shape}, expected {w.shape}"
            np.testing.assert_allclose(im.pixels, w, rtol=0, atol=tol, err_msg=f"{name}[{k}]")

    grey = (rng.random((28, 28)) * 255).astype(np.uint8)
    colour = (rng.random((28, 28, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(colour).save(buf, format="JPEG")
    array = rng.random((2, 28, 28)).astype(np.float32)
    files = []
    for k, (blob, suffix) in enumerate([(png(grey), ".png"), (buf.getvalue(), ".jpg"), (npy(array), ".npy")]):
        for j, variant in enumerate(corrupt_variants(blob, rng, 20)):
            path = tmp_path / f"case{k}_{j}{suffix}"
            path.write_bytes(variant)
            files.append(path)
    special = {"nan.npy": np.full((2, 8, 8), np.nan), "inf.npy": np.full((1, 8, 8), np.inf),
               "rank5.npy": np.zeros((1, 1, 1, 8, 8)), "strings.npy": np.array(["a", "b"]),
               "empty.npy": np.zeros((0, 8, 8)), "negative.npy": -np.ones((1, 4, 4)),
               "too_bright.npy": np.full((1, 4, 4), 256.0), "wide4d.npy": np.zeros((2, 5, 8, 8)),
               "complex.npy": np.zeros((1, 4, 4), np.complex64), "negative_int.npy": -np.ones((1, 4, 4), np.int16),
               "object.npy": None, "text.png": b"hello, I am not a picture", "empty.png": b"",
               "two.npz": {"a": np.zeros((1, 4, 4)), "b": np.zeros((1, 4, 4))}}
    for name, arr in special.items():
        path = tmp_path / name
        if arr is None:
            path.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (2,), }" +
                             b" " * 60 + b"\n" + b"\x00" * 16)
        elif isinstance(arr, bytes):
            path.write_bytes(arr)
        elif isinstance(arr, dict):
            np.savez(path, **arr)
        else:
            np.save(path, arr)
        files.append(path)

    answered = refused = checked = 0
    for path in files:
        tol = 1e-6
        if path.name in special:
            want = "refused"
        elif path.suffix == ".npy":
            want = npy_expected(path, array)
        else:
            want, tol = pillow_grey(path)
        try:
            images = read_inputs([path])
        except DataError as e:
            assert want is None or isinstance(want, str) or want == [], \
                f"{path.name}: refused although it decodes: {e}"
            assert_clear(e, DataError, path.name)
            if isinstance(want, str) and want != "refused":
                assert_clear(e, DataError, want)
            refused += 1
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{path.name}: {type(e).__name__} instead of a DataError: {e}")
        assert path.name not in special, f"{path.name} must be refused"
        assert not isinstance(want, str) and want != [], f"{path.name}: accepted although it should say {want!r}"
        assert_read_well(images, path, path.name)
        if want is not None:
            assert len(images) == len(want), path.name
            for k, (im, w) in enumerate(zip(images, want)):
                assert im.pixels.shape == w.shape, f"{path.name}[{k}]: shape {im.pixels.shape} != {w.shape}"
                np.testing.assert_allclose(im.pixels, w, rtol=0, atol=tol, err_msg=f"{path.name}[{k}]")
            checked += 1
        answered += 1
    print(f"image/array files: {len(valid)} well-formed read exactly; {len(files)} damaged or odd: {answered} "
          f"read ({checked} pixel for pixel as an independent decode reads them), {refused} refused naming the file")
    assert len(files) >= 70 and refused >= 30 and checked >= 5


# ------------------------------------------------------------------------------------ IDX and scene files
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_expected(raw: bytes) -> np.ndarray | None:
    """The array an IDX file holds by the format's definition (None: not a valid IDX file)."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            return None
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in IDX_TYPES or raw[3] == 0:
        return None
    ndim, dtype = raw[3], np.dtype(IDX_TYPES[raw[2]])
    if len(raw) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    if len(raw) - 4 - 4 * ndim != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
        return None
    return np.frombuffer(raw[4 + 4 * ndim:], dtype=dtype).reshape(dims)


def test_fuzz_idx_and_scene_files(tmp_path):
    rng = np.random.default_rng(2)
    pixels = (rng.random((5, 28, 28)) * 255).astype(np.uint8)
    idx = idx_bytes(pixels)
    assert np.array_equal(idx_expected(idx), pixels)
    variants = corrupt_variants(idx, rng, 30) + corrupt_variants(gzip.compress(idx, mtime=0), rng, 10)
    variants += [struct.pack(">I", 0x0803) + b"\xff" * 12, gzip.compress(idx), idx_bytes(pixels.astype(np.int16)),
                 idx_bytes(rng.random((3, 4)).astype(np.float64)), idx_bytes(np.arange(7, dtype=np.int32))]
    read = idx_refused = 0
    for j, variant in enumerate(variants):
        path = tmp_path / f"bad{j}-idx3-ubyte"
        path.write_bytes(variant)
        want = idx_expected(variant)
        try:
            a = read_idx(path)
        except DataError as e:
            assert want is None, f"{path.name}: a valid IDX file was refused: {e}"
            assert_clear(e, DataError, path.name)
            idx_refused += 1
            continue
        assert want is not None, f"{path.name}: an invalid IDX file was read"
        assert isinstance(a, np.ndarray) and a.shape == want.shape, path.name
        assert a.dtype == want.dtype.newbyteorder("=") and a.dtype.isnative, f"{path.name}: dtype {a.dtype}"
        assert np.array_equal(a, want, equal_nan=a.dtype.kind == "f"), f"{path.name}: the values differ"
        read += 1

    digits = np.zeros((10, 28, 28), np.uint8)
    digits[:, 6:22, 10:18] = 200
    good = tmp_path / "good.npz"
    scenes = generate_scenes(digits, np.arange(10), 8, SceneConfig(seed=0))
    scenes.save(good)
    loaded = refused = 0
    for j, variant in enumerate(corrupt_variants(good.read_bytes(), rng, 40)):
        path = tmp_path / f"scenes{j}.npz"
        path.write_bytes(variant)
        try:
            back = Scenes.load(path)
        except DataError as e:
            assert_clear(e, DataError, path.name)
            refused += 1
            continue
        # the zip's CRCs guard every array, so a flip that still loads missed the data: all of it is intact
        for key in ("images", "counts", "boxes", "ink_boxes", "labels"):
            assert np.array_equal(getattr(back, key), getattr(scenes, key)), f"{path.name}: {key} changed"
        assert back.config == scenes.config and back.split == scenes.split, path.name
        loaded += 1
    print(f"IDX files: {len(variants)} cases, {read} read as the format defines, {idx_refused} refused; scene "
          f"files: {loaded + refused} cases, {loaded} loaded intact, {refused} refused")
    assert len(variants) >= 55 and read >= 3 and idx_refused >= 20 and refused >= 20
