"""``air serve``: the JSON API against the model's own functions, bad requests, concurrent requests, the
command line, and the page itself driven in Debian's headless Chromium (skipped where it is not installed).

A tiny untrained 50x50 model keeps this fast; every check compares the server's answers with the same model's
``AIR.infer`` / ``attention`` / ``sample_prior``, so it holds for any model. ``AIR_SERVE_CHECKPOINT=path``
runs the same tests on a trained model; ``AIR_SERVE_SCREENSHOTS=dir`` also keeps the browser's screenshots."""
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import browser_page, needs_browser, untrained_checkpoint
from PIL import Image

from attend_infer_repeat.cli import main
from attend_infer_repeat.data.images import prepare
from attend_infer_repeat.model import AIR, attention
from attend_infer_repeat.serve import MAX_BODY_BYTES, Server, Service, bind

S = 50


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    if os.environ.get("AIR_SERVE_CHECKPOINT"):
        return Path(os.environ["AIR_SERVE_CHECKPOINT"])
    return untrained_checkpoint(tmp_path_factory.mktemp("serve"), S)


@pytest.fixture(scope="module")
def model(checkpoint):
    return AIR.load(checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint):
    srv = Server(Service(AIR.load(checkpoint), name=checkpoint.name), bind("127.0.0.1", 0)).start()
    yield srv
    srv.stop()


def call(url, path, body=None, *, data=None, ctype="application/json", method=None):
    """(status, decoded JSON answer) of one request."""
    if body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def scribble(seed: int) -> np.ndarray:
    """A 50x50 uint8 image with a few random strokes."""
    rng = np.random.default_rng(seed)
    img = np.zeros((S, S), np.uint8)
    for _ in range(rng.integers(0, 4)):
        x0, y0 = rng.integers(5, 45, 2)
        dx, dy = rng.integers(-15, 16, 2)
        for t in np.linspace(0, 1, 40):
            x, y = int(np.clip(x0 + t * dx, 0, S - 2)), int(np.clip(y0 + t * dy, 0, S - 2))
            img[y:y + 2, x:x + 2] = 255
    return img


def expected(model, pixels_u8) -> dict:
    r = model.infer(np.asarray(pixels_u8, np.uint8).reshape(1, S, S))
    return {"count": int(r.counts[0]), "boxes": r.boxes[0].numpy(), "recon": r.reconstruction[0, 0].numpy()}


def png_bytes(a: np.ndarray, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- the API
def test_infer_answers_what_air_infer_finds(server, model):
    counts = set()
    for seed in range(6):
        img = scribble(seed)
        status, r = call(server.url, "/api/infer", {"pixels": img.ravel().tolist()})
        assert status == 200
        want = expected(model, img)
        counts.add(r["count"])
        assert r["count"] == want["count"] == sum(s["present"] for s in r["steps"])
        np.testing.assert_allclose(np.array(r["boxes"]).reshape(-1, 4), want["boxes"], atol=2e-3)
        recon = np.array(r["reconstruction"]).reshape(S, S)
        assert np.abs(recon - np.clip(want["recon"], 0, 1) * 255).max() <= 1
        assert r["pixels"] == img.ravel().tolist()
        for s in r["steps"]:
            assert ("crop" in s) == s["present"] and len(s.get("crop", [0] * 784)) == 28 * 28


def test_infer_crops_are_the_guides_glimpses(server, model):
    img = scribble(2)
    _, r = call(server.url, "/api/infer", {"pixels": img.ravel().tolist()})
    x = torch.from_numpy(img.astype(np.float32) / 255)[None, None]
    for k, where in enumerate(r["z_where"]):
        want = attention.crop(x, torch.tensor([where]), 28)[0, 0].numpy()
        got = np.array(r["steps"][k]["crop"]).reshape(28, 28)
        assert np.abs(got - np.clip(want, 0, 1) * 255).max() <= 2  # z_where rounded to 4 decimals


def test_transform_uses_the_models_crop_and_place(server):
    img = scribble(1)
    body = {"pixels": img.ravel().tolist(), "scale": 2.5, "x": 0.3, "y": -0.2}
    status, r = call(server.url, "/api/transform", body)
    assert status == 200
    x = torch.from_numpy(img.astype(np.float32) / 255)[None, None]
    zw = torch.tensor([[2.5, 0.3, -0.2]])
    crop = attention.crop(x, zw, 28)
    placed = attention.place(crop, zw, S)
    assert np.abs(np.array(r["crop"]).reshape(28, 28) - np.clip(crop[0, 0].numpy(), 0, 1) * 255).max() <= 1
    assert np.abs(np.array(r["placed"]).reshape(S, S) - np.clip(placed[0, 0].numpy(), 0, 1) * 255).max() <= 1
    np.testing.assert_allclose(r["box"], attention.where_to_boxes(zw, S)[0].numpy(), atol=1e-3)
    assert r["window_pixels"] == pytest.approx(20.0)
    _, r2 = call(server.url, "/api/transform", dict(body, scale=1.2))
    assert r2["crop"] != r["crop"]


def test_generate_is_the_prior_and_reproducible(server, model):
    status, r = call(server.url, "/api/generate", {"n": 4, "objects": 2, "seed": 7})
    assert status == 200 and r["seed"] == 7
    assert [s["count"] for s in r["scenes"]] == [2] * 4
    images, _, boxes = model.sample_prior(4, num_objects=2, generator=torch.Generator().manual_seed(7))
    for i, s in enumerate(r["scenes"]):
        assert np.abs(np.array(s["pixels"]).reshape(S, S) - np.clip(images[i, 0].numpy(), 0, 1) * 255).max() <= 1
        np.testing.assert_allclose([b["box"] for b in s["boxes"]], boxes[i, :2].numpy(), atol=1e-3)
    assert call(server.url, "/api/generate", {"n": 4, "objects": 2, "seed": 7})[1] == r
    _, fresh = call(server.url, "/api/generate", {"n": 3})
    assert isinstance(fresh["seed"], int) and len(fresh["scenes"]) == 3
    _, prior = call(server.url, "/api/generate", {"n": 32, "objects": None, "seed": 1})
    assert all(0 <= s["count"] <= 3 for s in prior["scenes"])


def test_upload_is_prepared_like_air_infer(server, model):
    # a dark-on-light 120x80 RGB drawing: turned grey, inverted, padded and resized as 'air infer' does
    rgb = np.full((80, 120, 3), 255, np.uint8)
    rgb[20:60, 30:36] = 0
    rgb[15:22, 70:100] = (0, 0, 80)
    status, r = call(server.url, "/api/upload?invert=auto", data=png_bytes(rgb), ctype="image/png")
    assert status == 200, r
    assert r["source"] == {"name": "upload", "width": 120, "height": 80, "inverted": True}
    grey = np.asarray(Image.fromarray(rgb).convert("L"), np.float64) / 255
    prepared = np.round(prepare(grey, S).image * 255).astype(np.uint8)
    assert np.abs(np.array(r["pixels"]) - prepared.ravel().astype(int)).max() <= 1
    want = expected(model, r["pixels"])
    assert r["count"] == want["count"]
    np.testing.assert_allclose(np.array(r["boxes"]).reshape(-1, 4), want["boxes"], atol=2e-3)


def test_scene_is_a_held_out_scene_and_writes_nothing(server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("AIR_DATA_DIR", str(cache))
    status, r = call(server.url, "/api/scene?seed=5")
    assert status == 200, r
    assert len(r["pixels"]) == S * S and 0 <= r["true_count"] <= 2 and len(r["true_boxes"]) == r["true_count"]
    assert call(server.url, "/api/scene?seed=5")[1] == r
    assert not cache.exists()  # MNIST read from the package, no cache written
    assert call(server.url, "/api/scene?seed=-1")[0] == 400


BAD_REQUESTS = [
    ("/api/infer", {"pixels": [0] * 10}, "application/json", 400, "2500 integers"),
    ("/api/infer", {"pixels": [0.5] * 2500}, "application/json", 400, "integers 0..255"),
    ("/api/infer", {"pixels": [300] + [0] * 2499}, "application/json", 400, "300"),
    ("/api/infer", {"image": []}, "application/json", 400, "'pixels'"),
    ("/api/infer", b"{not json", "application/json", 400, "not valid JSON"),
    ("/api/infer", b"[1, 2]", "application/json", 400, "JSON object"),
    ("/api/infer", b"\xff\xfe", "application/json", 400, "not valid JSON"),
    ("/api/infer", b"pixels=1", "application/x-www-form-urlencoded", 415, "application/json"),
    ("/api/transform", {"pixels": [0] * 2500, "scale": 0.0}, "application/json", 400, "'scale'"),
    ("/api/transform", {"pixels": [0] * 2500, "scale": 1e9}, "application/json", 400, "'scale'"),
    ("/api/transform", {"pixels": [0] * 2500, "scale": 2, "x": 7}, "application/json", 400, "'x'"),
    ("/api/transform", {"pixels": [0] * 2500, "scale": "big"}, "application/json", 400, "'scale'"),
    ("/api/transform", b'{"pixels": [], "scale": NaN}', "application/json", 400, "'pixels'"),
    ("/api/generate", {"n": 0}, "application/json", 400, "'n'"),
    ("/api/generate", {"n": 1000}, "application/json", 400, "'n'"),
    ("/api/generate", {"objects": 9}, "application/json", 400, "'objects'"),
    ("/api/generate", {"seed": -3}, "application/json", 400, "'seed'"),
    ("/api/upload", b"hello, I am not a picture", "image/png", 400, "not a readable image"),
    ("/api/upload", png_bytes(np.zeros((9, 9), np.uint8))[:40], "image/png", 400, "not a readable image"),
    ("/api/upload", b"", "image/png", 400, "empty"),
    ("/api/upload", b"hello", "text/plain", 415, "expected an image file"),
    ("/api/upload", png_bytes(np.zeros((5000, 4000), np.uint8)), "image/png", 400, "the limit is 16,000,000"),
]


@pytest.mark.parametrize("path,body,ctype,status,message", BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx_and_the_server_lives_on(server, path, body, ctype, status, message):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, answer = call(server.url, path, data=data, ctype=ctype)
    assert got == status and message in answer["error"], answer
    assert call(server.url, "/api/info")[0] == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    """A declared Content-Length over the limit is answered 413 at once, without waiting for the body."""
    host, port = server.sock.getsockname()[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/api/upload")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "limit is 5 MB" in json.loads(r.read())["error"]
    conn.close()
    assert call(server.url, "/api/info")[0] == 200


def test_upload_invert_option_is_checked(server):
    status, r = call(server.url, "/api/upload?invert=sometimes", data=png_bytes(np.zeros((9, 9), np.uint8)),
                     ctype="image/png")
    assert status == 400 and "invert" in r["error"]


def test_a_failing_handler_is_a_500_for_that_request_only(server, monkeypatch):
    from attend_infer_repeat import serve

    def boom(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(serve.Service, "infer", boom)
    status, r = call(server.url, "/api/infer", {"pixels": [0] * 2500})
    assert status == 500 and "simulated bug" in r["error"]
    monkeypatch.undo()
    assert call(server.url, "/api/infer", {"pixels": [0] * 2500})[0] == 200


def test_concurrent_requests_are_not_mixed_up(server, model):
    """12 threads at once, each with its own image / seed: every answer belongs to its own request."""
    images = [scribble(100 + i) for i in range(12)]
    want = [expected(model, img) for img in images]
    want_gen = {seed: call(server.url, "/api/generate", {"n": 2, "seed": seed})[1] for seed in range(4)}
    failures = []

    def worker(i):
        try:
            for rep in range(3):
                _, r = call(server.url, "/api/infer", {"pixels": images[i].ravel().tolist()})
                assert r["pixels"] == images[i].ravel().tolist()
                assert r["count"] == want[i]["count"]
                np.testing.assert_allclose(np.array(r["boxes"]).reshape(-1, 4), want[i]["boxes"], atol=2e-3)
                seed = (i + rep) % 4
                assert call(server.url, "/api/generate", {"n": 2, "seed": seed})[1] == want_gen[seed]
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"thread {i}: {e!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures


# ---------------------------------------------------------------------------------------- command line
def test_cli_serve_starts_prints_the_url_and_stops_on_ctrl_c(checkpoint):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "attend_infer_repeat.cli", "serve", str(checkpoint), "--port",
                             "0", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("air serve: http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[2]
        status, info = call(url, "/api/info")
        assert status == 200 and info["image_size"] == S
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"Transform explorer" in r.read()
        with urllib.request.urlopen(url + "static/app.js", timeout=10) as r:
            assert b"/api/infer" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "air serve: stopped" in out, err


def test_cli_serve_errors(checkpoint, tmp_path, capsys):
    with bind("127.0.0.1", 0) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", str(checkpoint), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ in a browser
@needs_browser
def test_page_in_headless_chromium(server, model, tmp_path):
    shots = Path(os.environ.get("AIR_SERVE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with browser_page(1300, 900) as (page, errors):
        page.goto(server.url)
        page.wait_for_selector("body[data-ready]")
        idle = lambda: page.wait_for_function("window.air.idle()")  # noqa: E731

        # --- Decompose: draw a '1' and a '7' with real mouse strokes, updating as we draw
        canvas = page.locator("#draw").bounding_box()
        zoom = canvas["width"] / S
        at = lambda x, y: (canvas["x"] + x * zoom, canvas["y"] + y * zoom)  # noqa: E731
        for stroke in ([(13, 11), (14, 39)], [(27, 13), (42, 13), (33, 40)]):
            page.mouse.move(*at(*stroke[0]))
            page.mouse.down()
            for pt in stroke[1:]:
                page.mouse.move(*at(*pt), steps=12)
            page.mouse.up()
        idle()
        shown = page.evaluate("window.air.displayed")
        pixels = np.array(shown["pixels"], np.uint8).reshape(S, S)
        assert pixels[11:39, 12:16].max() == 255 and pixels[12:15, 28:42].max() == 255  # the strokes landed
        assert pixels[:, :10].max() == 0 and pixels[45:].max() == 0
        want = expected(model, pixels)
        assert page.inner_text("#count") == str(want["count"])
        boxes = page.locator("#draw-stage .box")
        assert boxes.count() == want["count"]
        for k in range(want["count"]):
            b = boxes.nth(k).bounding_box()
            got = [(b["x"] - canvas["x"]) / zoom, (b["y"] - canvas["y"]) / zoom,
                   (b["x"] + b["width"] - canvas["x"]) / zoom, (b["y"] + b["height"] - canvas["y"]) / zoom]
            np.testing.assert_allclose(got, want["boxes"][k], atol=0.15)
        assert page.locator("#steps .step.present").count() == want["count"]
        page.screenshot(path=str(shots / "serve-decompose.png"), full_page=True)

        # --- Transform explorer: move the scale slider with the keyboard and the x slider with the mouse
        page.click("#tab-transform")
        idle()
        before = page.evaluate("window.air.transform")
        assert before["request"]["pixels"] == shown["pixels"]
        page.focus("#t-scale")
        for _ in range(40):
            page.keyboard.press("ArrowRight")
        slider = page.locator("#t-x").bounding_box()
        page.mouse.click(slider["x"] + slider["width"] * 0.6, slider["y"] + slider["height"] / 2)
        idle()
        after = page.evaluate("window.air.transform")
        req = after["request"]
        assert req["scale"] == pytest.approx(before["request"]["scale"] + 0.40, abs=1e-6)
        assert req["x"] > 0.2
        assert after["result"]["crop"] != before["result"]["crop"]
        x = torch.from_numpy(pixels.astype(np.float32) / 255)[None, None]
        crop = attention.crop(x, torch.tensor([[req["scale"], req["x"], req["y"]]]), 28)[0, 0].numpy()
        assert np.abs(np.array(after["result"]["crop"]).reshape(28, 28) - np.clip(crop, 0, 1) * 255).max() <= 1
        assert page.locator("#t-scene-stage .box").count() == 1
        page.screenshot(path=str(shots / "serve-transform.png"), full_page=True)

        # --- A random held-out scene, decomposed like a drawing
        page.click("#tab-decompose")
        page.click("#random-scene")
        page.wait_for_function("document.getElementById('input-note').innerText.includes('true count')")
        idle()
        scene = page.evaluate("window.air.displayed")
        assert scene["pixels"] != shown["pixels"]
        assert page.inner_text("#count") == str(expected(model, scene["pixels"])["count"])

        # --- Uploads: a broken file and a text file show their errors; a good image clears them
        page.set_input_files("#upload", files=[{"name": "broken.png", "mimeType": "image/png",
                                                "buffer": b"\x89PNG\r\n\x1a\n this is not really a PNG"}])
        err = page.locator("#decompose-error")
        err.wait_for(state="visible")
        assert "broken.png" in err.inner_text() and "not a readable image" in err.inner_text()
        page.screenshot(path=str(shots / "serve-upload-error.png"), full_page=True)
        page.set_input_files("#upload", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                "buffer": b"hello"}])
        page.wait_for_function("document.getElementById('decompose-error').innerText.includes('notes.txt')")
        assert "expected an image file" in err.inner_text()
        good = np.zeros((60, 60), np.uint8)
        good[10:50, 25:31] = 255
        page.set_input_files("#upload", files=[{"name": "one.png", "mimeType": "image/png",
                                                "buffer": png_bytes(good)}])
        err.wait_for(state="hidden")
        idle()
        up = page.evaluate("window.air.displayed")
        assert page.inner_text("#count") == str(expected(model, up["pixels"])["count"])
        assert "one.png: 60x60" in page.inner_text("#input-note")

        # --- Generate: the object slider sets the count of every sample
        page.click("#tab-generate")
        page.wait_for_function("window.air.generated && document.querySelectorAll('#g-grid figure').length")
        slider = page.locator("#g-objects")
        slider.focus()
        page.keyboard.press("Home")
        page.keyboard.press("ArrowRight")
        page.keyboard.press("ArrowRight")
        page.wait_for_function("window.air.generated.objects === 2 && window.air.pending === 0")
        captions = page.locator("#g-grid figcaption").all_inner_texts()
        assert all(c.startswith("2 objects") for c in captions) and len(captions) == 8
        assert page.locator("#g-grid .box").count() == 16
        page.screenshot(path=str(shots / "serve-generate.png"), full_page=True)
        assert not errors, errors
    for name in ("decompose", "transform", "upload-error", "generate"):
        with Image.open(shots / f"serve-{name}.png") as im:
            assert im.size[0] >= 1300 and np.asarray(im.convert("L")).std() > 10


def test_scenes_from_a_file_and_a_file_of_the_wrong_size(model, tmp_path):
    from attend_infer_repeat.data import SceneConfig, Scenes, generate_scenes
    from attend_infer_repeat.serve import RequestError

    digits = np.zeros((20, 28, 28), np.uint8)
    digits[:, 8:20, 11:17] = 255
    labels = np.arange(20) % 10
    good = generate_scenes(digits, labels, 10, SceneConfig(), split="test").save(tmp_path / "good.npz")
    r = Service(model, scenes=str(good)).scene(3)
    assert r["source"] == str(good) and r["pixels"] == Scenes.load(good).images[r["index"]].ravel().tolist()
    small = generate_scenes(digits, labels, 4, SceneConfig(canvas_size=40, digit_size=10), split="test")
    bad = small.save(tmp_path / "small.npz")
    with pytest.raises(RequestError, match="40x40") as e:
        Service(model, scenes=str(bad)).scene(0)
    assert e.value.status == 503


def test_random_scenes_are_like_the_runs_own_data(model):
    """A model trained on sprites is shown sprite scenes (with the run's sizes), not multi-MNIST; without a run
    configuration the bank is multi-MNIST as before."""
    from attend_infer_repeat.config import RunConfig, TrainConfig

    cfg = RunConfig(model=model.config, train=TrainConfig(dataset="sprites", counts=(1, 2)))
    r = Service(model, run_config=cfg).scene(5)
    assert "sprite" in r["source"]
    assert 1 <= r["true_count"] <= 2 and len(r["true_boxes"]) == r["true_count"]
    r = Service(model).scene(5)
    assert "MNIST test digits" in r["source"]
