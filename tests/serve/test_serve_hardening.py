"""``air serve`` against what a network can send (it is often started with ``--host 0.0.0.0``): idle, slow and
malformed connections, uploads built to blow up memory, hundreds of requests at once, a foreign Host header
(DNS rebinding), image formats the page does not promise, client mistakes that used to be 500s, a bad port,
and raw fuzzed bytes. Every test talks to a real server on loopback (in a thread, or in a subprocess when
its memory is measured) and each one fails on the bug it is named after.

A tiny untrained 50x50 model keeps this fast; the deadlines are shortened (``request_seconds``) so that no
test waits the default 10 s."""
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import untrained_checkpoint
from PIL import Image

import attend_infer_repeat
from attend_infer_repeat.errors import DataError, InputError
from attend_infer_repeat.model import AIR
from attend_infer_repeat.serve import Server, Service, bind

S = 50
DEADLINE = 1.5  # request_seconds of the test server (the default is 10 s)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("serve_hardening"), S)


@pytest.fixture(scope="module")
def server(checkpoint):
    """Short deadlines, so slow connections are cut off within the test's patience."""
    srv = Server(Service(AIR.load(checkpoint), name=checkpoint.name), bind("127.0.0.1", 0), "error",
                 allowed_hosts=["air.test"], request_seconds=DEADLINE, keep_alive_seconds=1.0).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def busy_server(checkpoint):
    """The default deadlines: under hundreds of client threads on two cores a client may stall for seconds."""
    srv = Server(Service(AIR.load(checkpoint), name=checkpoint.name), bind("127.0.0.1", 0), "error").start()
    yield srv
    srv.stop()


def address(srv):
    return srv.sock.getsockname()[:2]


# ------------------------------------------------------------------------------------------------ helpers
def read_answer(sock) -> tuple[int, dict, bytes] | None:
    """One HTTP answer from ``sock``: (status, headers, body), or None if it was closed before any byte.
    A socket timeout (no answer and not closed) propagates."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            if not buf:
                return None
            raise AssertionError(f"the connection closed inside an answer's head: {buf[:200]!r}")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    n = int(headers.get("content-length", 0))
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:n]


def raw(srv, data: bytes, *, shut: bool = False, timeout: float = DEADLINE + 3):
    """Send ``data`` on a new connection; (answer or None, seconds until it came or the connection closed)."""
    with socket.create_connection(address(srv), timeout=timeout) as s:
        t0 = time.monotonic()
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        answer = read_answer(s)
        return answer, time.monotonic() - t0


def request(srv, method, path, body=None, *, ctype="application/json", host=None, timeout=30):
    """(status, headers, decoded JSON or text) of one request with http.client."""
    conn = http.client.HTTPConnection(*address(srv), timeout=timeout)
    try:
        headers = {"Content-Type": ctype} if body is not None else {}
        if host is not None:
            conn.putrequest(method, path, skip_host=True)
            conn.putheader("Host", host)
            for k, v in headers.items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        else:
            conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        ctype_out = r.getheader("content-type", "")
        return r.status, dict(r.getheaders()), json.loads(data) if "json" in ctype_out else data.decode()
    finally:
        conn.close()


def png(a: np.ndarray, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, format="PNG")
    return buf.getvalue()


def encoded(a: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def pixels_body(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.zeros((S, S), np.uint8)
    x, y = rng.integers(8, 40, 2)
    img[y:y + 8, x:x + 3] = 255
    return json.dumps({"pixels": img.ravel().tolist()}).encode()


# ------------------------------------------------------------------------------- slow and idle connections
def test_idle_and_slow_connections_do_not_lock_others_out(server):
    """64 idle and 10 slow connections (uvicorn's limit_concurrency was 64 and had no deadline: everyone else
    got 503 for as long as they stayed): other requests are still answered within a second, and the idle and
    slow ones are closed (408 for those that sent something) once the deadline passes."""
    idle = [socket.create_connection(address(server), timeout=DEADLINE + 3) for _ in range(64)]
    slow = [socket.create_connection(address(server), timeout=DEADLINE + 3) for _ in range(10)]
    stop = threading.Event()

    def trickle():
        for s in slow:
            s.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while not stop.is_set():
            for s in slow:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass
            stop.wait(0.2)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    t0 = time.monotonic()
    try:
        time.sleep(0.3)
        for _ in range(5):
            start = time.monotonic()
            status, _, info = request(server, "GET", "/api/info", timeout=5)
            assert status == 200 and info["image_size"] == S
            assert time.monotonic() - start < 1.0
        for s in idle:
            assert read_answer(s) is None  # closed without an answer
        for s in slow:
            status, _, body = read_answer(s)
            assert status == 408 and "did not arrive in full" in json.loads(body)["error"]
        assert time.monotonic() - t0 < DEADLINE + 2.5
    finally:
        stop.set()
        t.join()
        for s in idle + slow:
            s.close()


def test_slow_and_malformed_requests_are_cut_off(server):
    """A slow header, a slow body, a huge declared chunk (h11 waited for all of it), a malformed chunk size and
    an idle connection: each is answered 408/413/400 or closed within the deadline, not held for ever."""
    def trickle(head: bytes, drip: bytes):
        """Send ``head``, then ``drip`` every 0.25 s, past the deadline: the server must cut it off."""
        with socket.create_connection(address(server), timeout=DEADLINE + 3) as s:
            t0 = time.monotonic()
            s.sendall(head)
            try:
                while time.monotonic() - t0 < DEADLINE + 2:
                    s.sendall(drip)
                    time.sleep(0.25)
            except OSError:
                pass
            return read_answer(s), time.monotonic() - t0

    def slow_headers():
        return trickle(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-A: b\r\n")

    def slow_body():
        return trickle(b"POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 20000\r\n\r\n{\"pixels\": [", b"0, ")

    chunked = (b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
    with ThreadPoolExecutor(6) as pool:
        jobs = {"slow headers": pool.submit(slow_headers), "slow body": pool.submit(slow_body),
                "huge chunk": pool.submit(raw, server, chunked + b"ffffffffffffffffff\r\nabc"),
                "bad chunk": pool.submit(raw, server, chunked + b"zz\r\nabc"),
                "idle": pool.submit(raw, server, b""),
                "half a request line": pool.submit(raw, server, b"GET /api/inf")}
        got = {name: job.result() for name, job in jobs.items()}
    expect = {"slow headers": 408, "slow body": 408, "huge chunk": 413, "bad chunk": 400, "idle": None,
              "half a request line": 408}
    for name, (answer, seconds) in got.items():
        status = None if answer is None else answer[0]
        assert status == expect[name], (name, answer)
        assert seconds < DEADLINE + 2.0, (name, seconds)
        if answer is not None:
            assert "error" in json.loads(answer[2]), (name, answer)
    assert got["huge chunk"][1] < 1.0 and got["bad chunk"][1] < 1.0  # at once, not at the deadline
    assert request(server, "GET", "/api/info")[0] == 200


def test_bodies_held_at_once_are_capped(server):
    """Up to 512 connections may each declare a 5 MB body (2.5 GB held); all requests together hold at most
    64 MB: 20 uploads declaring 4 MB and sending nothing more, the 4 past 64 MB are answered 503 at once; once
    they are gone uploads are answered again."""
    head = (b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 4000000\r\n\r\n")
    socks = [socket.create_connection(address(server), timeout=DEADLINE + 3) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(head)
        time.sleep(0.5)
        busy = []
        for s in socks:
            s.settimeout(0.05)
            try:
                answer = read_answer(s)
            except TimeoutError:
                continue
            busy.append(answer[0])
            assert "busy" in json.loads(answer[2])["error"]
        assert busy == [503] * 4, busy
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    status, _, answer = request(server, "POST", "/api/upload", png(np.zeros((9, 9), np.uint8)), ctype="image/png")
    assert status == 200, answer


# --------------------------------------------------------------------------------------------- memory
LAUNCH = """
import sys, torch
torch.set_num_threads(1)
from attend_infer_repeat.model import AIR
from attend_infer_repeat.serve import Server, Service, bind
srv = Server(Service(AIR.load(sys.argv[1]), name="model"), bind("127.0.0.1", 0))
print(srv.url, flush=True)
srv.run()
"""


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak memory from /proc")
def test_worst_case_uploads_keep_the_server_under_1_gb(checkpoint):
    """20 concurrent 4000x4000 RGBA PNGs (a few kB each, 64 MB once decoded), 20 concurrent 20000x1 PNGs (the
    square pad of the old prepare() made +1.5 GB of each) and a 1x100000 PNG (a MemoryError 500): every one
    is answered 200, and the server's peak resident memory (VmHWM) stays under 1 GB. A sampler kills the
    server as soon as it passes 1 GB, so the old code fails here without taking the machine down."""
    limit_kb = 1_000_000
    big = np.zeros((4000, 4000, 4), np.uint8)
    big[1000:3000, 1800:2200] = (255, 255, 255, 255)
    big[500:800, 500:3500] = (200, 100, 50, 128)
    uploads = [png(big)] * 20 + [png(np.full((1, 20000), 255, np.uint8))] * 20
    thin = png(np.full((100000, 1), 255, np.uint8))
    package_dir = str(Path(attend_infer_repeat.__file__).resolve().parents[1])  # the code under test
    env = dict(os.environ, PYTHONPATH=package_dir + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(checkpoint)], stdout=subprocess.PIPE, text=True,
                            env=env)
    over = []
    done = threading.Event()

    def sample():
        while not done.is_set() and proc.poll() is None:
            try:
                rss = _status_kb(proc.pid, "VmRSS")
            except (OSError, KeyError):
                return
            if rss > limit_kb:
                over.append(rss)
                proc.kill()
                return
            done.wait(0.01)

    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        host, port = url[len("http://"):].rstrip("/").split(":")
        baseline = _status_kb(proc.pid, "VmRSS")
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def send(data):
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            try:
                conn.request("POST", "/api/upload", body=data, headers={"Content-Type": "image/png"})
                r = conn.getresponse()
                return r.status, json.loads(r.read())
            except OSError as e:
                return None, repr(e)
            finally:
                conn.close()

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(send, uploads[:20])) + list(pool.map(send, uploads[20:]))
        answers.append(send(thin))
        peak = _status_kb(proc.pid, "VmHWM") if proc.poll() is None else None
    finally:
        done.set()
        proc.kill()
        proc.wait(10)
    assert not over, f"the server passed 1 GB resident ({over[0] / 1e3:.0f} MB) and was stopped"
    assert peak is not None and peak < limit_kb, f"peak resident memory {peak} kB"
    print(f"\nupload memory: baseline {baseline / 1e3:.0f} MB, peak (VmHWM) {peak / 1e3:.0f} MB, "
          f"{len(uploads) + 1} uploads")
    for status, r in answers:
        assert status == 200, r
    big_answer = answers[0][1]
    assert big_answer["source"]["width"] == 4000 and big_answer["count"] >= 0
    assert answers[20][1]["source"] == {"name": "upload", "width": 20000, "height": 1, "inverted": True}
    assert answers[-1][1]["source"]["height"] == 100000 and max(answers[-1][1]["pixels"]) <= 255


def _old_prepare(a: np.ndarray, size: int) -> np.ndarray:
    """prepare() as it was: pad to a centred square of the longer side, then resize it (the reference)."""
    h, w = a.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = a
    if side != size:
        square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(square, 0, 1)


def test_prepare_memory_follows_the_image_not_its_square():
    """prepare() of a 1x5000 image held a 5000x5000 float square (100 MB; 1x20000 made `air infer` peak at
    1.8 GB); now it costs kilobytes, and its values still equal Pillow's resize of the padded square."""
    from attend_infer_repeat.data.images import prepare

    line = np.ones((1, 5000), np.float32)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        p = prepare(line, S)
        extra = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert extra < 5_000_000, f"prepare of a 1x5000 image allocated {extra / 1e6:.1f} MB"
    assert (p.pad_x, p.pad_y, p.scale) == (0.0, 2499.0, S / 5000)
    rng = np.random.default_rng(0)
    for h, w, size in [(80, 120, 50), (28, 28, 50), (50, 50, 50), (1, 700, 50), (700, 1, 50), (7, 900, 40),
                       (123, 457, 37), (51, 49, 50), (3, 2, 50)]:
        a = rng.random((h, w)).astype(np.float32)
        np.testing.assert_allclose(prepare(a, size, "never").image, _old_prepare(a, size), atol=1e-6)


def test_uploads_are_shrunk_in_pillow_and_stay_close_to_the_full_computation():
    """read_image_bytes(max_side=) shrinks inside Pillow; prepare() of that copy keeps the original's size for
    the padding and the mapping, and its pixels stay within a couple of grey levels of the full computation."""
    from PIL import ImageDraw

    from attend_infer_repeat.data.images import prepare, read_image_bytes

    im = Image.new("L", (1000, 700), 0)
    draw = ImageDraw.Draw(im)
    draw.line([(100, 100), (700, 600)], fill=255, width=25)
    draw.ellipse([(600, 80), (900, 380)], outline=180, width=30)
    data = encoded(np.asarray(im), "PNG")
    full, small = read_image_bytes(data), read_image_bytes(data, max_side=16 * S)
    assert full.pixels.shape == (700, 1000) and small.pixels.shape == (560, 800)
    assert (small.width, small.height, small.border_mean) == (1000, 700, full.border_mean)
    a, b = prepare(full, S), prepare(small, S)
    assert (a.scale, a.pad_x, a.pad_y) == (b.scale, b.pad_x, b.pad_y) == (S / 1000, 0.0, 150.0)
    assert np.abs(a.image - b.image).max() * 255 < 2.5 and np.abs(a.image - b.image).mean() * 255 < 0.2
    thin = read_image_bytes(png(np.full((100000, 1), 255, np.uint8)), max_side=16 * S)
    assert thin.pixels.shape == (800, 1) and prepare(thin, S).image.max() < 0.01  # a 1/2000 px wide line


# ------------------------------------------------------------------------------------------ concurrency
def test_answers_stay_correct_under_400_concurrent_mixed_requests(busy_server):
    """400 requests at once, of eight kinds (inference, upload, transform, samples, scenes, info): each answer
    is exactly the one the same request gets alone (the old 64-connection limit answered 503)."""
    scribble = np.zeros((S, S), np.uint8)
    scribble[10:40, 20:24] = 255
    kinds = [("POST", "/api/infer", pixels_body(1), "application/json"),
             ("POST", "/api/infer", pixels_body(2), "application/json"),
             ("POST", "/api/upload", png(255 - scribble), "image/png"),
             ("POST", "/api/transform", json.dumps({"pixels": scribble.ravel().tolist(), "scale": 2.0, "x": 0.2,
                                                    "y": -0.1}).encode(), "application/json"),
             ("POST", "/api/generate", json.dumps({"n": 2, "seed": 3}).encode(), "application/json"),
             ("POST", "/api/generate", json.dumps({"n": 1, "objects": 2, "seed": 9}).encode(), "application/json"),
             ("GET", "/api/scene?seed=11", None, None),
             ("GET", "/api/info", None, None)]
    alone = []
    for method, path, body, ctype in kinds:
        status, _, answer = request(busy_server, method, path, body, ctype=ctype)
        assert status == 200, answer
        alone.append(answer)
    start = threading.Barrier(400, timeout=60)

    def one(i):
        method, path, body, ctype = kinds[i % len(kinds)]
        start.wait()
        try:
            return i, request(busy_server, method, path, body, ctype=ctype, timeout=120)
        except OSError as e:
            return i, (None, None, repr(e))

    with ThreadPoolExecutor(400) as pool:
        results = list(pool.map(one, range(400)))
    wrong = [(i, status, str(answer)[:200]) for i, (status, _, answer) in results
             if status != 200 or answer != alone[i % len(kinds)]]
    assert not wrong, f"{len(wrong)} of 400 answers differ, e.g. {wrong[:3]}"


# ---------------------------------------------------------------------------------------- Host header
def test_a_foreign_host_header_is_refused(server):
    """DNS rebinding: a page on attacker.example that re-points its name to 127.0.0.1 sends Host:
    attacker.example; it got 200 and the checkpoint's path. Now 421 with the API's JSON error; the loopback
    names, the bound address and --allow-host names are answered."""
    port = address(server)[1]
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", "air.test.evil",
                 "", "192.168.1.7"):
        status, _, answer = request(server, "GET", "/api/info", host=host)
        assert status == 421 and "DNS rebinding" in answer["error"], (host, answer)
        assert "best.pt" not in json.dumps(answer)
    assert request(server, "GET", "/", host="attacker.example")[0] == 421  # the page too
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "air.test",
                 f"air.test:{port}"):
        assert request(server, "GET", "/api/info", host=host)[0] == 200, host
    answer, _ = raw(server, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\n\r\n")
    assert answer[0] in (400, 421)  # two Host headers: refused (by h11 itself)


def test_host_check_when_listening_on_every_interface():
    """Bound to 0.0.0.0 the server is reached by this machine's address or name: IP literals and the host
    name are answered, other names are not (a rebinding attack needs a name the attacker controls)."""
    from attend_infer_repeat.serve import HostCheck

    wide = HostCheck("0.0.0.0")
    for host in ("192.168.1.7:8000", "10.0.0.3", "[fe80::1]:8000", "[2001:db8::5]", socket.gethostname(),
                 f"{socket.gethostname()}.local:8000", "localhost:8000"):
        assert wide.allows(host), host
    for host in ("attacker.example", "192.168.1.7.nip.io", "evil.local", ""):
        assert not wide.allows(host), host
    narrow = HostCheck("127.0.0.1")
    assert not narrow.allows("192.168.1.7") and not narrow.allows(socket.gethostname() + ".attacker.example")
    assert HostCheck("192.168.1.7").allows("192.168.1.7:8000")
    assert not HostCheck("192.168.1.7").allows("10.0.0.3")
    assert HostCheck("127.0.0.1", ["*"]).allows("anything.example")
    sub = HostCheck("127.0.0.1", ["*.example.org", "Box.Lan:8000"])
    assert sub.allows("a.example.org") and sub.allows("box.lan") and not sub.allows("example.org.evil")
    assert HostCheck("::").any_ip and HostCheck("::").allows("[fe80::1]")


# --------------------------------------------------------------------------------------------- formats
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 20\n%%EndComments\n"
       b"newpath 2 2 moveto 18 18 lineto stroke showpage\n%%EOF\n")


def test_only_the_promised_formats_are_decoded(server, tmp_path, monkeypatch):
    """EPS went to Pillow's EPS plugin (Ghostscript) and ICO was decoded: now both are refused with a 4xx
    naming the accepted formats, the EPS plugin is never called (uploads and files), and every format the
    page promises still works."""
    from PIL import EpsImagePlugin

    from attend_infer_repeat.data.images import read_image_file

    called = []
    real_open = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open",
                        lambda self: (called.append(1), real_open(self))[1])
    ico = io.BytesIO()
    Image.fromarray(np.full((32, 32), 200, np.uint8)).save(ico, format="ICO")
    for data, ctype in ((EPS, "image/x-eps"), (EPS, "image/png"), (ico.getvalue(), "image/x-icon")):
        status, _, answer = request(server, "POST", "/api/upload", data, ctype=ctype)
        assert 400 <= status < 500 and "accepted formats" in answer["error"], answer
    path = tmp_path / "drawing.eps"
    path.write_bytes(EPS)
    with pytest.raises(DataError, match="drawing.eps: not a readable image.*accepted formats"):
        read_image_file(path)
    assert not called, "Pillow's EPS plugin (Ghostscript) was reached"
    img = np.zeros((40, 30, 3), np.uint8)
    img[5:35, 10:14] = 255
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM"):
        status, _, answer = request(server, "POST", "/api/upload", encoded(img, fmt), ctype="image/x-any")
        assert status == 200 and answer["source"]["width"] == 30, (fmt, answer)


# ------------------------------------------------------------------------------------ client mistakes
@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000, b'{"pixels": ' + b"[" * 40 + b"]" * 40 + b"}"],
                         ids=["100k-lists", "50k-objects", "40-deep"])
def test_deeply_nested_json_is_a_400(server, body):
    status, _, answer = request(server, "POST", "/api/infer", body)
    assert status == 400 and "nests" in answer["error"], answer


def test_brackets_inside_strings_are_not_nesting(server):
    body = json.dumps({"pixels": "[" * 1000, "note": "]{" * 500}).encode()
    status, _, answer = request(server, "POST", "/api/infer", body)
    assert status == 400 and "'pixels' must be a list" in answer["error"], answer


@pytest.mark.parametrize("seed", ["%C2%B2", "9" * 5000, "-1", "1e3", "%201", "2147483648", "0x10", "%D9%A3"])
def test_bad_seeds_are_a_400(server, seed):
    status, _, answer = request(server, "GET", f"/api/scene?seed={seed}")
    assert status == 400 and "seed must be an integer" in answer["error"], answer


def test_unknown_api_paths_and_wrong_methods_get_json(server):
    status, _, answer = request(server, "GET", "/api/nope")
    assert status == 404 and "/api/infer" in answer["error"]
    status, headers, answer = request(server, "GET", "/api/infer")
    assert status == 405 and "POST" in answer["error"] and "POST" in headers.get("allow", "")
    status, _, answer = request(server, "POST", "/api/info", b"{}")
    assert status == 405 and "GET" in answer["error"]
    status, _, answer = request(server, "DELETE", "/api/generate")
    assert status == 405 and isinstance(answer, dict)
    assert request(server, "GET", "/nope")[0] == 404  # outside the API: Starlette's plain answer
    assert request(server, "GET", "/static/missing.js")[0] == 404


# ------------------------------------------------------------------------------------ port and warning
@pytest.mark.parametrize("port", [70000, 65536, -1, "80", 8000.0, True])
def test_a_port_outside_0_65535_is_refused(checkpoint, port):
    """--port 70000 listened on 4464 (70000 mod 65536): now an InputError, before the model is loaded."""
    from attend_infer_repeat.serve import serve

    with pytest.raises(InputError, match=r"0\.\.65535"):
        bind("127.0.0.1", port)
    with pytest.raises(InputError, match=r"0\.\.65535"):
        serve(Path("/nonexistent/run"), port=port)  # the port is checked before the checkpoint is read


def test_listening_beyond_loopback_warns(checkpoint, capsys):
    from attend_infer_repeat.serve import serve

    srv = serve(checkpoint, host="127.0.0.1", port=0)
    srv.sock.close()
    assert "WARNING" not in capsys.readouterr().err
    srv = serve(checkpoint, host="0.0.0.0", port=0)
    srv.sock.close()
    err = capsys.readouterr().err
    assert "no login and no encryption" in err and "anyone who can reach this port" in err
    assert err.count("\n") == 1  # one plain line


# ---------------------------------------------------------------------------------------- raw fuzzing
def fuzz_cases(rng: np.random.Generator, n: int) -> list[tuple[bytes, bool]]:
    """Random bytes, truncated and mutated requests, odd framing and odd values: (bytes, half-close after)."""
    seeds = [b"%C2%B2", b"9" * 50, b"-0", b"%00", b"%FF%FE", b"1" * 11, b"\xc2\xb2", b"%2F..%2F"]
    valid = [b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
             b"GET /api/scene?seed=" + seeds[0] + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
             b"POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
             + str(len(pixels_body(0))).encode() + b"\r\n\r\n" + pixels_body(0),
             b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 75\r\n\r\n"
             + png(np.zeros((4, 4), np.uint8))[:75],
             b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n9\r\n{\"n\": 2}\r\n0\r\n\r\n"]
    cases = []
    for k in range(n):
        kind = k % 8
        base = valid[int(rng.integers(len(valid)))]
        if kind == 0:
            data = rng.bytes(int(rng.integers(1, 400)))
        elif kind == 1:
            data = base[:int(rng.integers(1, len(base)))]
        elif kind == 2:
            b = bytearray(base)
            for i in rng.integers(0, len(b), int(rng.integers(1, 6))):
                b[i] = int(rng.integers(0, 256))
            data = bytes(b)
        elif kind == 3:
            seed = seeds[int(rng.integers(len(seeds)))]
            data = b"GET /api/scene?seed=" + seed + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        elif kind == 4:
            depth = int(rng.integers(30, 3000))
            body = b"[" * depth + b"]" * int(rng.integers(0, depth + 1))
            data = (b"POST /api/transform HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        elif kind == 5:
            method = [b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"BREW", b"G\x00T"][int(rng.integers(7))]
            path = [b"/api/infer", b"/api/", b"/api/info/", b"/static/../serve.py", b"//", b"/%ZZ", b"*"][
                int(rng.integers(7))]
            data = method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        elif kind == 6:
            sizes = [b"ffffffffffffffffff", b"-1", b"1;ext=" + b"x" * 5000, b"\xff", b"0x10", b" 5"]
            size = sizes[int(rng.integers(len(sizes)))]
            data = (b"POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n{}\r\n0\r\n\r\n")
        else:
            header = [b"Content-Length: 99999999999999999999", b"Content-Length: -5", b"Content-Length: 1, 2",
                      b"X: " + b"a" * 70000, b"Host: " + b"h" * 300, b"Transfer-Encoding: gzip",
                      b"Content-Type: application/json; charset=\xff", b"Expect: 100-continue"][int(rng.integers(8))]
            data = b"POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\nContent-Length: 2\r\n\r\n{}"
        cases.append((data, bool(rng.random() < 0.5)))
    return cases


def test_raw_request_fuzz_never_gets_a_500_and_the_server_stays_up(server):
    """300 raw requests (random bytes, truncated, mutated, bad seeds, deep JSON, odd methods and paths, bad
    chunk sizes, odd headers), half of them half-closed after sending: none is answered 5xx, each is answered
    or closed within the deadline, and the server answers normally afterwards."""
    cases = fuzz_cases(np.random.default_rng(17), 300)

    def run(case):
        data, shut = case
        try:
            answer, seconds = raw(server, data, shut=shut)
        except (ConnectionResetError, BrokenPipeError):
            return None, 0.0, data  # the server closed while we were still sending: an answer of sorts
        return answer, seconds, data

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(run, cases))
    bad = [(a[0], d[:120]) for a, s, d in results if a is not None and a[0] >= 500]
    slow = [(round(s, 2), d[:120]) for a, s, d in results if s > DEADLINE + 2.0]
    assert not bad, f"{len(bad)} 5xx answers, e.g. {bad[:3]}"
    assert not slow, f"{len(slow)} connections neither answered nor closed in time, e.g. {slow[:3]}"
    statuses = sorted({a[0] for a, _, _ in results if a is not None})
    unanswered = sum(a is None for a, _, _ in results)
    print(f"\nfuzz: {len(cases)} cases, statuses {statuses}, {unanswered} closed unanswered")
    assert request(server, "GET", "/api/info")[0] == 200
    assert request(server, "POST", "/api/infer", pixels_body(0))[0] == 200
