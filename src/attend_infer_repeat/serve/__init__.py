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

from .app import API_PATHS, _static_dir, create_app
from .guards import HostCheck, json_depth_over, protocol_class
from .limits import (
    BODIES_BYTES_AT_ONCE,
    CONNECTIONS_AT_ONCE,
    DECODES_AT_ONCE,
    KEEP_ALIVE_SECONDS,
    MAX_BODY_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_JSON_DEPTH,
    MAX_SAMPLES,
    REQUEST_SECONDS,
    SHRINK_FACTOR,
)
from .server import Server, bind, check_port, exposure_warning, return_freed_memory, serve, url_of
from .service import RequestError, SceneBank, Service

__all__ = ["API_PATHS", "BODIES_BYTES_AT_ONCE", "CONNECTIONS_AT_ONCE", "DECODES_AT_ONCE", "HostCheck",
           "KEEP_ALIVE_SECONDS", "MAX_BODY_BYTES", "MAX_IMAGE_PIXELS", "MAX_JSON_DEPTH", "MAX_SAMPLES",
           "REQUEST_SECONDS", "RequestError", "SHRINK_FACTOR", "SceneBank", "Server", "Service", "_static_dir",
           "bind", "check_port", "create_app", "exposure_warning", "json_depth_over", "protocol_class",
           "return_freed_memory", "serve", "url_of"]
