"""Fuzzing the public entry points with malformed input: every case must end in a clear AIRError (or, where
the input is actually usable, a correct answer) — never a hang, a crash deep inside torch, or a bare
traceback. Deterministic (seeded); the number of cases tried is printed with -s and asserted."""
from __future__ import annotations

import io
import struct

import numpy as np
import torch
from PIL import Image

from attend_infer_repeat import AIR, AIRError
from attend_infer_repeat.images import read_inputs
from attend_infer_repeat.mnist import read_idx
from attend_infer_repeat.scenes import SceneConfig, Scenes, generate_scenes

from conftest import idx_bytes


def infer_cases(rng: np.random.Generator) -> list:
    """Malformed (and a few well-formed) inputs for AIR.infer on a 20x20 model."""
    cases = [None, 3, "images", [[0.5]], {"x": 1}, np.zeros(0), np.zeros((0, 20, 20)), torch.zeros(0, 1, 20, 20)]
    shapes = [(20,), (20, 20), (1, 20), (2, 19, 20), (2, 20, 21), (2, 2, 20, 20), (2, 3, 20, 20),
              (1, 1, 1, 20, 20), (4, 20, 20, 1), (3000, 20, 20), (1, 1, 200, 200), (2, 1, 20, 20)]
    dtypes = [np.float32, np.float64, np.float16, np.uint8, np.int32, np.int64, np.bool_, np.complex64]
    for shape in shapes:
        for dtype in dtypes:
            a = rng.random(shape)
            cases.append((a * 255).astype(dtype) if dtype in (np.uint8, np.int32, np.int64) else a.astype(dtype))
    for bad in (np.nan, np.inf, -np.inf, -0.1, 1.0001, 255.0, 1e30):
        a = rng.random((3, 20, 20)).astype(np.float32)
        a[1, 5, 5] = bad
        cases += [a, torch.from_numpy(a), torch.from_numpy(a)[:, None]]
    cases.append(torch.rand(2, 20, 20, dtype=torch.float64).requires_grad_())
    cases.append(torch.rand(2, 40, 20)[:, ::2])  # non-contiguous view
    return cases


def test_fuzz_infer(tiny_config):
    model = AIR(tiny_config)
    cases = infer_cases(np.random.default_rng(0))
    answered = refused = 0
    for case in cases:
        try:
            r = model.infer(case)
        except AIRError as e:
            assert str(e), "an error must say what was wrong"
            refused += 1
            continue
        b = r.counts.shape[0]
        assert len(r.boxes) == b and all(torch.isfinite(x).all() for x in r.boxes)
        answered += 1
    print(f"AIR.infer: {len(cases)} cases, {answered} answered, {refused} refused with a clear error")
    assert len(cases) >= 100 and answered > 0 and refused > 0


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
    buf = io.BytesIO()
    Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray((rng.random((28, 28, 3)) * 255).astype(np.uint8)).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    npy = io.BytesIO()
    np.save(npy, rng.random((2, 28, 28)).astype(np.float32))
    files = []
    for k, (blob, suffix) in enumerate([(png, ".png"), (jpeg, ".jpg"), (npy.getvalue(), ".npy")]):
        for j, variant in enumerate(corrupt_variants(blob, rng)):
            path = tmp_path / f"case{k}_{j}{suffix}"
            path.write_bytes(variant)
            files.append(path)
    for name, arr in [("nan.npy", np.full((2, 8, 8), np.nan)), ("rank5.npy", np.zeros((1, 1, 1, 8, 8))),
                      ("strings.npy", np.array(["a", "b"])), ("empty.npy", np.zeros((0, 8, 8))),
                      ("object.npy", None)]:
        path = tmp_path / name
        if arr is None:
            path.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (2,), }" +
                             b" " * 60 + b"\n" + b"\x00" * 16)
        else:
            np.save(path, arr)
        files.append(path)
    answered = refused = 0
    for path in files:
        try:
            images = read_inputs([path])
        except AIRError as e:
            assert path.name in str(e), f"the error for {path.name} must name the file: {e}"
            refused += 1
            continue
        assert len(images) > 0
        answered += 1
    print(f"image/array files: {len(files)} cases, {answered} read, {refused} refused naming the file")
    assert len(files) >= 50 and refused > 0


def test_fuzz_idx_and_scene_files(tmp_path):
    rng = np.random.default_rng(2)
    idx = idx_bytes((rng.random((5, 28, 28)) * 255).astype(np.uint8))
    digits = np.zeros((10, 28, 28), np.uint8)
    digits[:, 6:22, 10:18] = 200
    good = tmp_path / "good.npz"
    generate_scenes(digits, np.arange(10), 8, SceneConfig(seed=0)).save(good)
    good_bytes = good.read_bytes()
    cases = 0
    for j, variant in enumerate(corrupt_variants(idx, rng, 20) + [struct.pack(">I", 0x0803) + b"\xff" * 12]):
        path = tmp_path / f"bad{j}-idx3-ubyte"
        path.write_bytes(variant)
        cases += 1
        try:
            a = read_idx(path)
            assert isinstance(a, np.ndarray)  # a bit flip in the pixels is still a valid file
        except AIRError as e:
            assert path.name in str(e)
    for j, variant in enumerate(corrupt_variants(good_bytes, rng, 25)):
        path = tmp_path / f"scenes{j}.npz"
        path.write_bytes(variant)
        cases += 1
        try:
            loaded = Scenes.load(path)  # a flip that misses the data still loads: then it must be consistent
            assert len(loaded) == 8 and loaded.images.shape == (8, 50, 50)
        except AIRError as e:
            assert path.name in str(e)
    print(f"IDX and scene files: {cases} cases")
    assert cases >= 50
