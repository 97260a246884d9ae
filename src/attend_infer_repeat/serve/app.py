"""The Starlette application: the page, its static files and the JSON API, each route a thin call into
:class:`.service.Service`."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from ..data.images import FORMAT_NAMES
from ..errors import AIRError
from .guards import HostCheck, _BodyBudget, _HostGuard, _json_body, _read_body
from .limits import BODIES_BYTES_AT_ONCE, MAX_SAMPLES, SCALE_RANGE, SEED_PATTERN, SHIFT_RANGE, UPLOAD_TYPES
from .service import RequestError, Service, _integer, _number

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ HTTP layer
def _static_dir() -> Path:
    return Path(str(resources.files("attend_infer_repeat") / "static"))


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
