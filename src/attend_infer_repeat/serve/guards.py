"""What keeps ``air serve`` standing on a network: a cap on request bodies held at once, JSON nesting,
Host names (DNS rebinding) and an HTTP protocol with deadlines."""

from __future__ import annotations

import ipaddress
import json
import re
import socket

import numpy as np

from ..errors import InputError
from .limits import BODIES_BYTES_AT_ONCE, LOOPBACK_NAMES, MAX_BODY_BYTES, MAX_JSON_DEPTH, REQUEST_SECONDS
from .service import RequestError


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
