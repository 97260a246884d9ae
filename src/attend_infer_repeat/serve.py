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

It is often started with ``--host 0.0.0.0``, so it defends itself against what a network can send:

- **Memory**: uploads are decoded at most :data:`DECODES_AT_ONCE` at a time and shrunk inside Pillow, while
  still 8-bit, to at most :data:`SHRINK_FACTOR` times the model's side before any float copy (see
  :mod:`.images`); bodies in flight are capped in total (:data:`BODIES_BYTES_AT_ONCE`); glibc is asked to
  give large freed buffers back to the system (:func:`return_freed_memory`).
- **Slow or idle connections**: a request's line, headers and body must arrive within
  :data:`REQUEST_SECONDS` (else 408 and the connection is closed), an idle keep-alive connection is closed
  after :data:`KEEP_ALIVE_SECONDS`, a chunk declared larger than the body limit is answered 413 at once, and
  up to :data:`CONNECTIONS_AT_ONCE` connections are open at once (:func:`protocol_class`).
- **DNS rebinding**: only requests whose ``Host`` names this server are answered (:class:`HostCheck`), others
  get 421.
- **Formats**: only :data:`.images.IMAGE_FORMATS` are decoded (no EPS/Ghostscript, ICO, PSD ...).
- **Client mistakes** are 4xx JSON answers, never 500: JSON nested deeper than :data:`MAX_JSON_DEPTH`, seeds
  that are not plain decimal numbers, unknown ``/api/`` paths (404) and wrong methods (405).

There is no login and no encryption: anyone who can reach the port can use the page and read what it serves;
:func:`serve` says so when it listens on anything but loopback.
"""
from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import json
import logging
import math
import re
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import torch

from .data.images import FORMAT_NAMES, IMAGE_FORMATS
from .errors import AIRError, DataError, InputError
from .model import attention

log = logging.getLogger(__name__)

#: Limits on what a request may ask for.
MAX_BODY_BYTES = 5 * 1024 * 1024  # uploads and JSON bodies
MAX_IMAGE_PIXELS = 16_000_000  # an uploaded image's width x height, checked before decoding
MAX_SAMPLES = 32  # scenes per Generate request
SCALE_RANGE = (0.25, 20.0)  # zoom s of the transform explorer (window side = image_size / s)
SHIFT_RANGE = (-3.0, 3.0)  # window centre x, y in normalised image coordinates
UPLOAD_TYPES = ("image/", "application/octet-stream")
N_SCENES = 500  # held-out scenes kept in memory for "random test scene"
MAX_JSON_DEPTH = 32  # [ and { nesting of a JSON body (the API's bodies use 2)
SEED_PATTERN = re.compile(r"[0-9]{1,10}")  # ?seed= of /api/scene: ASCII digits only ('²' is str.isdigit())

#: Limits on memory and connections (the server must survive what any machine on the network sends).
DECODES_AT_ONCE = 2  # uploads decoded at the same time (a 16-megapixel RGBA image is ~100 MB while decoded)
SHRINK_FACTOR = 16  # uploads are shrunk inside Pillow to at most this x the model's side before the float steps
BODIES_BYTES_AT_ONCE = 64 * 1024 * 1024  # request bodies held at once, all requests together (else 503)
REQUEST_SECONDS = 10.0  # a request's line, headers and body must all arrive within this (else 408, closed)
KEEP_ALIVE_SECONDS = 5.0  # an idle keep-alive connection is closed after this
CONNECTIONS_AT_ONCE = 512  # open connections (uvicorn's limit_concurrency; more are answered 503)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


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
        return {"name": self.name, "image_size": cfg.image_size, "window_size": cfg.window_size,
                "max_steps": cfg.max_steps, "z_what_dim": cfg.z_what_dim, "dair": cfg.dair,
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
        """An uploaded image file (bytes) -> the model's input (grey, light on dark, its size) and infer().
        At most DECODES_AT_ONCE uploads are decoded at a time, each shrunk inside Pillow (8-bit) to at most
        SHRINK_FACTOR x the model's side first, so memory does not grow with the number of uploads or with
        the image's shape."""
        from .data.images import INVERT_CHOICES, prepare, read_image_bytes

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
        from .data import SceneConfig, Scenes, generate_scenes, make_scenes
        from .data.registry import scene_dataset

        size = self.size
        if self.scenes_path is not None:
            s = Scenes.load(self.scenes_path)
            if s.images.shape[1:] != (size, size):
                raise DataError(f"{self.scenes_path}: scenes are {s.images.shape[1]}x{s.images.shape[2]}, the model "
                                f"works on {size}x{size}")
            return SceneBank(s.images, s.counts, s.boxes, str(self.scenes_path))
        from .data.mnist import load_items

        rc = self.run_config
        if rc is not None and rc.train.dataset != "files":  # scenes like the run's held-out ones
            from .data.datasets import scene_config

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


# ------------------------------------------------------------------------------------------------ HTTP layer
def _static_dir() -> Path:
    return Path(str(resources.files("attend_infer_repeat") / "static"))


class _BodyBudget:
    """Bytes of request bodies held at once, by all requests together: each request holds what it declared or
    has received so far until its answer is sent; one that would go over ``limit`` is answered 503. Used from
    the event loop only (no lock needed)."""

    KEY = "air.body_bytes"

    def __init__(self, limit: int = BODIES_BYTES_AT_ONCE):
        self.limit = limit
        self.used = 0

    def hold(self, request, n: int) -> None:
        held = request.scope.get(self.KEY, 0)
        if n <= held:
            return
        if self.used + n - held > self.limit:
            raise RequestError("the server is busy receiving other requests; try again in a moment", status=503)
        self.used += n - held
        request.scope[self.KEY] = n

    def release(self, request) -> None:
        self.used -= request.scope.pop(self.KEY, 0)


async def _read_body(request, limit: int = MAX_BODY_BYTES, budget: _BodyBudget | None = None) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes (and with 503 when
    ``budget``, the bodies held by all requests together, is spent)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_n = int(declared)
        except ValueError:
            raise RequestError(f"bad Content-Length header {declared[:40]!r}") from None
        if declared_n > limit:
            raise RequestError(f"the request body is {declared_n / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB",
                               status=413)
        if budget is not None:
            budget.hold(request, declared_n)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the request body is over the limit of {limit / 1e6:.0f} MB", status=413)
        if budget is not None:
            budget.hold(request, size)
        chunks.append(chunk)
    return b"".join(chunks)


#: A JSON string (an unterminated one runs to the end), removed before brackets are counted.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)


def json_depth_over(body: bytes, limit: int = MAX_JSON_DEPTH) -> int | None:
    """How deep ``[`` and ``{`` nest in a JSON text (brackets inside strings do not count) when that is more
    than ``limit``, else None. Linear time and no recursion, so it runs before ``json.loads``, which recurses
    once per level (100,000 ``[`` were a RecursionError, a 500). A body with at most ``limit`` brackets
    cannot nest deeper and is not scanned."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return None
    a = np.frombuffer(_JSON_STRING.sub(b"", body), dtype=np.uint8)
    step = ((a == ord("[")) | (a == ord("{"))).astype(np.int32) - ((a == ord("]")) | (a == ord("}")))
    depth = int(np.cumsum(step).max(initial=0))
    return depth if depth > limit else None


async def _json_body(request, budget: _BodyBudget | None = None) -> dict:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError(f"send a JSON object with Content-Type: application/json, got {ctype[:80] or 'none'!r}",
                           status=415)
    body = await _read_body(request, budget=budget)
    depth = json_depth_over(body)
    if depth is not None:
        raise RequestError(f"the JSON body nests {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
    try:
        data = json.loads(body)
    except RecursionError:
        raise RequestError(f"the JSON body nests too deep; the limit is {MAX_JSON_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(f"the body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RequestError(f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _host_name(value: str) -> str:
    """``name``, ``name:port``, ``[v6]:port`` or a bare IPv6 address -> the lower-case name, no trailing dot."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else ""
    if v.count(":") == 1:
        v = v.split(":")[0]
    return v.rstrip(".")


def _ip(name: str):
    try:
        return ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return None


class HostCheck:
    """Which ``Host`` headers the server answers: the guard against DNS rebinding, where a page on
    ``attacker.example`` re-points that name to this machine and reads the API as its own origin. The
    browser then sends ``Host: attacker.example``, which no honest request to this server carries.

    Answered: ``localhost``, ``127.0.0.1`` and ``[::1]`` (any port), the address the server listens on, and
    ``extra`` names (what ``air serve --allow-host`` gives: ``name``, ``*.example.org`` for its sub-domains,
    ``*`` to answer every Host). Listening on every interface (0.0.0.0 or ::), also any IP address literal
    (an attacker's page can only be reached by a name the attacker controls, so an address in Host is the
    user typing this machine's address, which is how others reach it) and this machine's own host name
    (``socket.gethostname()``, also with ``.local`` for mDNS). Other names the machine has (DNS names, a
    reverse proxy's) need ``extra``. A request without a Host header (HTTP/1.0) is answered: browsers always
    send one."""

    def __init__(self, bound: str = "127.0.0.1", extra=()):
        if isinstance(extra, str):
            extra = [extra]
        self.names = set(LOOPBACK_NAMES)
        self.suffixes: list[str] = []
        self.any_host = False
        address = _ip(_host_name(bound))
        self.any_ip = address is not None and address.is_unspecified
        for value in [bound, *extra]:
            name = _host_name(str(value))
            if name == "*":
                self.any_host = True
            elif name.startswith("*."):
                self.suffixes.append(name[1:])
            elif name:
                self.names.add(name)
        if self.any_ip:
            own = socket.gethostname().strip().lower().rstrip(".")
            if own:
                self.names |= {own, own + ".local"}

    def allows(self, host: str | None) -> bool:
        if host is None or self.any_host:
            return True
        name = _host_name(host)
        if name in self.names or any(name.endswith(suffix) for suffix in self.suffixes):
            return True
        return self.any_ip and _ip(name) is not None


class _HostGuard:
    """ASGI middleware: a request whose Host the :class:`HostCheck` refuses gets 421 and the API's JSON
    error, before it reaches any route (the page and its files included)."""

    def __init__(self, app, check: HostCheck):
        self.app = app
        self.check = check

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            hosts = [v for k, v in scope["headers"] if k == b"host"]
            host = hosts[0].decode("latin-1") if hosts else None
            if len(hosts) > 1 or not self.check.allows(host):
                from starlette.responses import JSONResponse

                shown = host if host is None or len(host) <= 100 else host[:100] + "..."
                port = (scope.get("server") or (None, "PORT"))[1]
                response = JSONResponse(
                    {"error": f"this server does not answer for the host {shown!r} (a guard against DNS "
                              f"rebinding); open it as http://127.0.0.1:{port}/ or by this machine's address, or "
                              "start air serve with --allow-host NAME"}, status_code=421)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


API_PATHS = ("/api/info", "/api/infer", "/api/upload", "/api/scene", "/api/transform", "/api/generate")


def create_app(service: Service, hosts: HostCheck | None = None, body_budget: int = BODIES_BYTES_AT_ONCE):
    """The Starlette application serving the page and its JSON API for ``service``; only requests whose Host
    ``hosts`` allows are answered (default: loopback names only)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    hosts = hosts if hosts is not None else HostCheck()
    budget = _BodyBudget(body_budget)

    def endpoint(handler):
        """Wrap a handler: any RequestError/AIRError is a 4xx JSON answer, anything else a 500 for this
        request alone (logged), so no request can take the server down."""
        async def wrapped(request):
            try:
                return JSONResponse(await handler(request), headers={"Cache-Control": "no-store"})
            except RequestError as e:
                headers = {"Retry-After": "1"} if e.status == 503 else None
                return JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)
            except AIRError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            except ClientDisconnect:  # the client left (or was closed for being too slow): nobody to answer
                return Response(status_code=400)
            except MemoryError:
                log.warning("air serve: %s %s ran out of memory", request.method, request.url.path)
                return JSONResponse({"error": "the server has not enough memory for this request now; try again "
                                              "or send a smaller image"}, status_code=503,
                                    headers={"Retry-After": "1"})
            except Exception as e:  # a bug, not the client's fault: answer, log, keep serving
                log.exception("air serve: %s %s failed", request.method, request.url.path)
                return JSONResponse({"error": f"internal error ({type(e).__name__}: {e})"}, status_code=500)
            finally:
                budget.release(request)
        return wrapped

    async def info(request):
        return service.info()

    async def infer(request):
        body = await _json_body(request, budget)
        return await run_in_threadpool(service.infer, service.pixels(body))

    async def upload(request):
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        name = unquote(request.headers.get("x-filename", "upload"))[:200] or "upload"
        if not ctype.startswith(UPLOAD_TYPES):
            raise RequestError(f"{name}: expected an image file ({FORMAT_NAMES}), got content type "
                               f"{ctype[:80] or 'none'!r}", status=415)
        data = await _read_body(request, budget=budget)
        invert = request.query_params.get("invert", "auto")
        return await run_in_threadpool(service.upload, data, name, invert)

    async def scene(request):
        seed = request.query_params.get("seed")
        if seed is not None:
            if not SEED_PATTERN.fullmatch(seed) or int(seed) >= 2 ** 31:
                shown = seed if len(seed) <= 20 else seed[:20] + "..."
                raise RequestError(f"seed must be an integer between 0 and {2 ** 31 - 1} (decimal digits), got "
                                   f"{shown!r}")
            seed = int(seed)
        return await run_in_threadpool(service.scene, seed)

    async def transform(request):
        body = await _json_body(request, budget)
        x = service.pixels(body)
        scale = _number(body, "scale", *SCALE_RANGE)
        sx = _number(body, "x", *SHIFT_RANGE, default=0.0)
        sy = _number(body, "y", *SHIFT_RANGE, default=0.0)
        return await run_in_threadpool(service.transform, x, scale, sx, sy)

    async def generate(request):
        body = await _json_body(request, budget)
        n = _integer(body, "n", 1, MAX_SAMPLES, default=8)
        objects = _integer(body, "objects", 0, service.config.max_steps, default=None, allow_none=True)
        seed = _integer(body, "seed", 0, 2 ** 31 - 1, default=None, allow_none=True)
        return await run_in_threadpool(service.generate, n, objects, seed)

    async def index(request):
        return FileResponse(_static_dir() / "index.html", headers={"Cache-Control": "no-store"})

    async def http_error(request, exc):
        """404/405 and other HTTP errors: the API's JSON error under /api/, Starlette's plain text elsewhere."""
        headers = getattr(exc, "headers", None)
        path = request.url.path
        if path == "/api" or path.startswith("/api/"):
            if exc.status_code == 405:
                allowed = (headers or {}).get("Allow", "")
                message = f"{request.method} is not allowed on {path}; use {allowed}"
            elif exc.status_code == 404:
                message = f"no such API path {path[:100]!r}; the API has {', '.join(API_PATHS)}"
            else:
                message = str(exc.detail)
            return JSONResponse({"error": message}, status_code=exc.status_code, headers=headers)
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=headers)
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=headers)

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
    return Starlette(routes=routes, middleware=[Middleware(_HostGuard, check=hosts)],
                     exception_handlers={HTTPException: http_error})


def _json_error_bytes(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 answer (the API's JSON error) that closes the connection, for the protocol layer."""
    from http import HTTPStatus

    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\ncache-control: no-store\r\n\r\n")
    return head.encode("latin-1") + body


def protocol_class(request_seconds: float = REQUEST_SECONDS, body_limit: int = MAX_BODY_BYTES):
    """uvicorn's h11 HTTP protocol with deadlines, as a class for ``uvicorn.Config(http=...)``.

    uvicorn arms no timer until a first answer is sent, so a connection that sends nothing, or its headers or
    body a byte at a time, stays open for ever; and its ``limit_concurrency`` counts open connections, so 64
    of those answered 503 to everyone. Here:

    - a request (line, headers, body) must arrive in full within ``request_seconds`` of the connection's
      opening or, on a kept-alive connection, of its first byte: else 408 (the API's JSON error) and the
      connection is closed; a connection that sent nothing is closed without an answer. Time the application
      takes to answer does not count.
    - a chunk of a chunked body declared larger than ``body_limit`` is answered 413 at once (h11 would wait
      for all of a ``ffffffffffffffffff``-byte chunk).
    - malformed requests get uvicorn's 400, as the API's JSON error.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if isinstance(request_seconds, bool) or not isinstance(request_seconds, (int, float)) or \
            not 0 < request_seconds < 1e6:
        raise InputError(f"request_seconds must be a positive number of seconds, got {request_seconds!r}")

    class AIRProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            self._deadline = None
            self._started = False  # whether bytes of the request now arriving were received
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is None and not self.transport.is_closing():
                self._deadline = self.loop.call_later(request_seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _receiving(self) -> bool:
            return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

        def data_received(self, data: bytes) -> None:
            if self._receiving():
                self._started = True
                self._arm()
            super().data_received(data)
            self._check()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self._receiving() and (self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]):
                self._started = True  # a pipelined request arrived (in part) while the last one was answered
                self._arm()
            self._check()

        def _check(self) -> None:
            if self.transport.is_closing():
                self._disarm()
                return
            if not self._receiving():  # all of the request is in: the application's time is not limited
                self._disarm()
                self._started = False
                return
            pending = getattr(getattr(self.conn, "_reader", None), "_bytes_in_chunk", 0)
            if isinstance(pending, int) and pending > body_limit:
                self._refuse(413, f"a chunk of {pending:,} bytes is over the body limit of {body_limit:,} bytes")

        def _answering(self) -> bool:
            cycle = self.cycle
            return cycle is not None and cycle.response_started and not cycle.response_complete

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or not self._receiving():
                return
            cycle = self.cycle
            answered = cycle is not None and cycle.response_complete and self.conn.their_state is h11.SEND_BODY
            if self._started and not answered and not self._answering():
                self._refuse(408, f"the request did not arrive in full within {request_seconds:g} s")
            else:  # nothing was sent on this connection, or it was answered already: just close it
                self.transport.close()

        def _refuse(self, status: int, message: str) -> None:
            self._disarm()
            if self._answering():
                self.transport.close()
                return
            self.transport.write(_json_error_bytes(status, message))
            self.transport.close()
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:  # the application sees a disconnect
                cycle.disconnected = True
                cycle.message_event.set()

        def send_400_response(self, msg: str) -> None:
            self._refuse(400, f"not a valid HTTP request ({msg})")

    AIRProtocol.__qualname__ = AIRProtocol.__name__ = "AIRProtocol"
    return AIRProtocol


def check_port(port) -> int:
    """``port`` if it is an integer 0..65535 (0: any free port), else an InputError (the OS would silently take
    it modulo 65536: 70000 listened on 4464)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"the port must be an integer 0..65535 (0 picks a free one), got {port!r}")
    return port


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port), or an InputError saying why not."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
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
    sock.listen(CONNECTIONS_AT_ONCE)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


def exposure_warning(sock: socket.socket) -> str | None:
    """The warning to print when ``sock`` listens on anything but loopback (None on loopback)."""
    host, port = sock.getsockname()[:2]
    address = _ip(host)
    if address is not None and address.is_loopback:
        return None
    where = ("every network interface of this machine" if address is not None and address.is_unspecified
             else host)
    return (f"air serve: WARNING: listening on {where} (port {port}). The page has no login and no encryption: "
            "anyone who can reach this port can use it and read what it serves (the model, its checkpoint's "
            "path, the test scenes). Use --host 127.0.0.1 (the default) to keep it on this machine.")


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_freed_memory_returned = False


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Linux with glibc: serve allocations of ``threshold`` bytes or more with mmap, so that a decoded image's
    buffers go back to the system as soon as they are freed. glibc's default threshold grows up to 32 MB as
    large blocks are freed and then keeps them in the heap (20 concurrent 16-megapixel uploads left the
    server at ~1.5 GB instead of < 1 GB). Anywhere else nothing happens. Returns whether it was set."""
    global _freed_memory_returned
    if _freed_memory_returned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no such function)
        _freed_memory_returned = libc.mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
    except (OSError, AttributeError):
        return False
    return _freed_memory_returned


class Server:
    """A uvicorn server for ``service`` on an already bound socket. ``run()`` blocks (Ctrl-C stops it);
    ``start()``/``stop()`` run it in a background thread (tests, notebooks).

    ``allowed_hosts``: Host names answered besides loopback and the bound address (:class:`HostCheck`);
    ``request_seconds``, ``keep_alive_seconds``, ``connections``: see :func:`protocol_class` and the module's
    constants."""

    def __init__(self, service: Service, sock: socket.socket, log_level: str = "warning", *, allowed_hosts=(),
                 request_seconds: float = REQUEST_SECONDS, keep_alive_seconds: float = KEEP_ALIVE_SECONDS,
                 connections: int = CONNECTIONS_AT_ONCE):
        import uvicorn

        self.sock = sock
        self.url = url_of(sock)
        self.hosts = HostCheck(sock.getsockname()[0], allowed_hosts)
        config = uvicorn.Config(create_app(service, self.hosts), log_level=log_level, access_log=False,
                                lifespan="off", limit_concurrency=connections, timeout_keep_alive=keep_alive_seconds,
                                http=protocol_class(request_seconds))
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        return_freed_memory()
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
          device: str = "cpu", allowed_hosts=()) -> Server:
    """Load ``checkpoint`` (a run directory or .pt file) and return a :class:`Server` bound to host:port.
    ``allowed_hosts``: more Host names to answer (``--allow-host``; see :class:`HostCheck`). A port outside
    0..65535 is an InputError before anything is loaded; listening on anything but loopback prints
    :func:`exposure_warning` to stderr."""
    from .checkpoint import load_run, resolve_checkpoint

    check_port(port)
    allowed_hosts = [allowed_hosts] if isinstance(allowed_hosts, str) else list(allowed_hosts or ())
    path = resolve_checkpoint(checkpoint)
    model, run_config, _ = load_run(path, device=device)
    sock = bind(host, port)
    server = Server(Service(model, name=str(path), scenes=scenes, run_config=run_config), sock,
                    allowed_hosts=[host, *allowed_hosts])
    warning = exposure_warning(sock)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return server
