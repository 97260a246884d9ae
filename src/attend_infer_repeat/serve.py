"""``air serve``: a local web page to play with a trained model.

Three tabs (the page is ``static/index.html``, ``app.js`` and ``style.css``, shipped with the package, no
build step and nothing fetched from the internet):

- **Decompose**: draw on the model's canvas, upload an image or pick a random held-out scene; the server runs
  :meth:`AIR.infer` and the page shows the count, each step's window in its colour, what each step cropped and
  what it drew, and the full reconstruction.
- **Transform explorer**: scale and shift sliders; the server crops that window with :func:`attention.crop`
  and draws the crop back with :func:`attention.place`, the very functions the model's guide and decoder use.
- **Generate**: scenes sampled from the generative model's prior (:meth:`AIR.sample_prior`).

The web layer is Starlette (ASGI) served by uvicorn. All model work runs in worker threads, one request at a
time behind a lock (the model's eval/train mode and its modules are shared state); sampling uses a generator
seeded per request, so concurrent requests never see each other's inputs or random numbers. Every request is
validated before it reaches torch: bodies are size-limited, uploads are decoded from memory with a pixel
limit, and every problem is a JSON ``{"error": ...}`` answer with a 4xx status. An unexpected failure is a 500
answer for that request only; the server keeps serving. Nothing is written to disk.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import torch

from . import attention
from .errors import AIRError, DataError, InputError

log = logging.getLogger(__name__)

#: Limits on what a request may ask for.
MAX_BODY_BYTES = 5 * 1024 * 1024  # uploads and JSON bodies
MAX_IMAGE_PIXELS = 16_000_000  # an uploaded image's width x height, checked before decoding
MAX_SAMPLES = 32  # scenes per Generate request
SCALE_RANGE = (0.25, 20.0)  # zoom s of the transform explorer (window side = image_size / s)
SHIFT_RANGE = (-3.0, 3.0)  # window centre x, y in normalised image coordinates
UPLOAD_TYPES = ("image/", "application/octet-stream")
N_SCENES = 500  # held-out scenes kept in memory for "random test scene"


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
        return {"name": self.name, "image_size": cfg.image_size, "window_size": cfg.window_size,
                "max_steps": cfg.max_steps, "z_what_dim": cfg.z_what_dim, "dair": cfg.dair,
                "scale_prior": [cfg.scale_prior_mean, cfg.scale_prior_std],
                "shift_prior": [cfg.shift_prior_mean, cfg.shift_prior_std],
                "limits": {"body_bytes": MAX_BODY_BYTES, "image_pixels": MAX_IMAGE_PIXELS,
                           "samples": MAX_SAMPLES, "scale": list(SCALE_RANGE), "shift": list(SHIFT_RANGE)}}

    # ------------------------------------------------------------------------------------------ decompose
    def infer(self, x: torch.Tensor) -> dict:
        """AIR.infer on one image (1, 1, H, W): count, every step's window, glimpse and drawing."""
        cfg = self.config
        with self._model_lock:
            r = self.model.infer(x)
            where = r.z_where[0]  # the present steps' z_where, in step order (present steps come first)
            glimpses = (attention.crop(x.expand(len(where), -1, -1, -1), where, cfg.window_size, cfg.min_zoom)
                        if len(where) else None)
        steps = []
        for k in range(cfg.max_steps):
            present = bool(r.z_pres[0, k] > 0)
            step = {"step": k + 1, "present": present, "presence_prob": round(float(r.pres_probs[0, k]), 4),
                    "box": _round(r.step_boxes[0, k], 3)}
            if present:
                step["crop"] = _u8(glimpses[k])
                step["window"] = _u8(r.step_windows[0, k])
            steps.append(step)
        return {"count": int(r.counts[0]), "boxes": [_round(b, 3) for b in r.boxes[0]],
                "z_where": [_round(w, 4) for w in r.z_where[0]], "steps": steps,
                "reconstruction": _u8(r.reconstruction[0]), "pixels": _u8(x[0])}

    def upload(self, data: bytes, name: str, invert: str) -> dict:
        """An uploaded image file (bytes) -> the model's input (grey, light on dark, its size) and infer()."""
        from .images import INVERT_CHOICES, prepare, read_image_bytes

        if invert not in INVERT_CHOICES:
            raise RequestError(f"invert must be one of {', '.join(INVERT_CHOICES)}, got {invert!r}")
        src = read_image_bytes(data, name, max_pixels=MAX_IMAGE_PIXELS)
        prep = prepare(src.pixels, self.size, invert)
        x = torch.from_numpy(np.round(prep.image * 255.0) / 255.0).float()[None, None]
        out = self.infer(x)
        out["source"] = {"name": name, "width": int(src.pixels.shape[1]), "height": int(src.pixels.shape[0]),
                         "inverted": prep.inverted}
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
        from .scenes import SceneConfig, Scenes, generate_scenes

        size = self.size
        if self.scenes_path is not None:
            s = Scenes.load(self.scenes_path)
            if s.images.shape[1:] != (size, size):
                raise DataError(f"{self.scenes_path}: scenes are {s.images.shape[1]}x{s.images.shape[2]}, the model "
                                f"works on {size}x{size}")
            return SceneBank(s.images, s.counts, s.boxes, str(self.scenes_path))
        from .mnist import load_items

        rc = self.run_config
        if rc is not None and rc.train.dataset != "files":  # scenes like the run's held-out ones
            from .datasets import scene_config

            config = dataclasses.replace(scene_config(rc, "test"), seed=0)
        else:  # no run configuration, or a run on the user's own (uncounted) images: multi-MNIST
            config = SceneConfig(canvas_size=size, seed=0)
        if config.dataset == "sprites":
            from .sprites import generate_sprites

            s = generate_sprites(N_SCENES, config, split="test")
            return SceneBank(s.images, s.counts, s.boxes, f"{N_SCENES} sprite scenes")
        title = "Fashion-MNIST test items" if config.dataset == "fashion" else "MNIST test digits"
        # reads only, writes nothing
        items, labels = load_items(config.dataset, "test", download=False, write_cache=False)
        s = generate_scenes(items, labels, N_SCENES, config, split="test")
        return SceneBank(s.images, s.counts, s.boxes, f"{N_SCENES} scenes built from {title}")

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


# ------------------------------------------------------------------------------------------------ HTTP layer
def _static_dir() -> Path:
    return Path(str(resources.files("attend_infer_repeat") / "static"))


async def _read_body(request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise RequestError(f"bad Content-Length header {declared!r}") from None
        if declared_n > limit:
            raise RequestError(f"the request body is {declared_n / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB",
                               status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is over the limit of {limit / 1e6:.0f} MB", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request) -> dict:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(f"send a JSON object with Content-Type: application/json, got {ctype or 'none'!r}",
                           status=415)
    body = await _read_body(request)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(f"the body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RequestError(f"the body must be a JSON object, got {type(data).__name__}")
    return data


def create_app(service: Service):
    """The Starlette application serving the page and its JSON API for ``service``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def endpoint(handler):
        """Wrap a handler: any RequestError/AIRError is a 4xx JSON answer, anything else a 500 for this
        request alone (logged), so no request can take the server down."""
        async def wrapped(request):
            try:
                return JSONResponse(await handler(request), headers={"Cache-Control": "no-store"})
            except RequestError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except AIRError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            except Exception as e:  # a bug, not the client's fault: answer, log, keep serving
                log.exception("air serve: %s %s failed", request.method, request.url.path)
                return JSONResponse({"error": f"internal error ({type(e).__name__}: {e})"}, status_code=500)
        return wrapped

    async def info(request):
        return service.info()

    async def infer(request):
        body = await _json_body(request)
        return await run_in_threadpool(service.infer, service.pixels(body))

    async def upload(request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        name = unquote(request.headers.get("x-filename", "upload"))[:200] or "upload"
        if not ctype.startswith(UPLOAD_TYPES):
            raise RequestError(f"{name}: expected an image file (PNG, JPEG, GIF, BMP, TIFF, WebP ...), got "
                               f"content type {ctype or 'none'!r}", status=415)
        data = await _read_body(request)
        invert = request.query_params.get("invert", "auto")
        return await run_in_threadpool(service.upload, data, name, invert)

    async def scene(request):
        seed = request.query_params.get("seed")
        if seed is not None:
            if not seed.isdigit() or int(seed) >= 2 ** 31:
                raise RequestError(f"seed must be an integer between 0 and {2 ** 31 - 1}, got {seed!r}")
            seed = int(seed)
        return await run_in_threadpool(service.scene, seed)

    async def transform(request):
        body = await _json_body(request)
        x = service.pixels(body)
        scale = _number(body, "scale", *SCALE_RANGE)
        sx = _number(body, "x", *SHIFT_RANGE, default=0.0)
        sy = _number(body, "y", *SHIFT_RANGE, default=0.0)
        return await run_in_threadpool(service.transform, x, scale, sx, sy)

    async def generate(request):
        body = await _json_body(request)
        n = _integer(body, "n", 1, MAX_SAMPLES, default=8)
        objects = _integer(body, "objects", 0, service.config.max_steps, default=None, allow_none=True)
        seed = _integer(body, "seed", 0, 2 ** 31 - 1, default=None, allow_none=True)
        return await run_in_threadpool(service.generate, n, objects, seed)

    async def index(request):
        return FileResponse(_static_dir() / "index.html", headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", index),
        Route("/api/info", endpoint(info)),
        Route("/api/infer", endpoint(infer), methods=["POST"]),
        Route("/api/upload", endpoint(upload), methods=["POST"]),
        Route("/api/scene", endpoint(scene)),
        Route("/api/transform", endpoint(transform), methods=["POST"]),
        Route("/api/generate", endpoint(generate), methods=["POST"]),
        Mount("/static", StaticFiles(directory=_static_dir()), name="static"),
    ]
    return Starlette(routes=routes)


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port), or an InputError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InputError(f"cannot resolve host {host!r}: {e}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port "
                         "(0 chooses a free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


class Server:
    """A uvicorn server for ``service`` on an already bound socket. ``run()`` blocks (Ctrl-C stops it);
    ``start()``/``stop()`` run it in a background thread (tests, notebooks)."""

    def __init__(self, service: Service, sock: socket.socket, log_level: str = "warning"):
        import uvicorn

        self.sock = sock
        self.url = url_of(sock)
        config = uvicorn.Config(create_app(service), log_level=log_level, access_log=False, lifespan="off",
                                limit_concurrency=64, timeout_keep_alive=5)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def start(self, timeout: float = 20.0) -> "Server":
        self._thread = threading.Thread(target=self.run, name="air-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the air serve server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


def serve(checkpoint, host: str = "127.0.0.1", port: int = 8000, scenes: str | None = None,
          device: str = "cpu") -> Server:
    """Load ``checkpoint`` (a run directory or .pt file) and return a :class:`Server` bound to host:port."""
    from .checkpoint import load_run, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    model, run_config, _ = load_run(path, device=device)
    return Server(Service(model, name=str(path), scenes=scenes, run_config=run_config), bind(host, port))
