"""Binding a socket, running uvicorn on it, and :func:`serve`, what ``air serve`` calls."""

from __future__ import annotations

import ctypes
import socket
import sys
import threading
import time

from ..errors import InputError
from .app import create_app
from .guards import HostCheck, _ip, protocol_class
from .limits import CONNECTIONS_AT_ONCE, KEEP_ALIVE_SECONDS, REQUEST_SECONDS
from .service import Service


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
    from ..checkpoint import load_run, resolve_checkpoint

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
