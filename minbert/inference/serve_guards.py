"""What stands between `minbert serve`'s app and a client: the listening socket, a deadline for a
request's headers, the concurrency limit, the API key and the body checks.

Outside in, as a request meets them:
- `bind_listener`: the socket is bound and listening before the model loads, so that a taken port
  fails at once (and no other process can take the port while the model loads).
- `header_timeout_protocol`: uvicorn's h11 protocol with a deadline from a connection's opening
  (or, on a kept-alive connection, a request's first byte) to the request's last header; a client
  that sends half a request line or half its headers and stalls is disconnected then. uvicorn has
  no such timeout of its own: its keep-alive timer runs only between requests and stops at the
  first byte received, so a stalled half request held its connection for ever.
- `ConcurrencyLimit`: at most `max_concurrent` requests in flight; one more gets a 503 with a JSON
  reason and `Retry-After` (uvicorn's own `limit_concurrency` answers in plain text and counts idle
  kept-alive connections as well).
- `ApiKeyGuard`: `Authorization: Bearer <key>`, compared in constant time; else a 401 with a JSON
  reason and `WWW-Authenticate: Bearer`.
- `RequestGuard`: a POST body must say it is JSON, fit in `max_body_bytes`, arrive within
  `body_timeout_s` and be UTF-8.

Every refusal here is `{"detail": "..."}` as the app's own 4xx are, and closes the connection: a
client must not go on sending a body that nobody reads. Before it, what is left of the body is read
and dropped, within `max_body_bytes` and `body_timeout_s` (`refuse`): a client that sends its
whole body before it reads the answer (most do) would otherwise find the connection reset under
it, and never see the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import socket
from dataclasses import dataclass

import h11
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from minbert.inference.serve_limits import Limits

OPEN_PATHS = frozenset({"/", "/health"})  # the page (no data in it) and the health probe need no key


async def reject(scope, send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """A JSON `{"detail": detail}` answer that closes the connection."""
    await JSONResponse({"detail": detail}, status, headers={**(headers or {}), "Connection": "close"})(scope, None, send)


async def refuse(scope, receive, send, limits: Limits, status: int, detail: str,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
    """`reject`, once the request's body has been read and dropped (`drain`)."""
    await drain(scope, receive, limits)
    await reject(scope, send, status, detail, headers)


async def drain(scope, receive, limits: Limits) -> None:
    """Read what is left of a request's body and drop it: up to max_body_bytes, within
    body_timeout_s; nothing where its Content-Length says more (that client is told at once)."""
    declared = dict(scope["headers"]).get(b"content-length", b"0")
    if not declared.isdigit() or int(declared) > limits.max_body_bytes:
        return

    async def read() -> None:
        left, more = limits.max_body_bytes, True
        while more and left >= 0:
            message = await receive()
            left -= len(message.get("body", b""))
            more = message.get("more_body", False) and message["type"] != "http.disconnect"

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), limits.body_timeout_s)


# ---------------------------------------------------------------------------------------
# The socket and the connection


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to (host, port) and listening, as uvicorn binds one (SO_REUSEADDR; IPv6
    where the host has a colon). A taken port is an OSError saying so in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(backlog)  # from here on the port is ours: a second server's bind fails
    except OSError as e:
        sock.close()
        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        why = "address already in use (another server? pick another --port)" if e.errno == errno.EADDRINUSE else e.strerror
        raise OSError(f"{where}: {why}") from None
    return sock


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, with a deadline of `header_timeout_s` for each request's line and
    headers: armed when the connection opens and when the first byte of a further request comes
    (uvicorn's keep-alive timer covers the silence before it), disarmed once h11 has the whole
    request head. At the deadline the connection is closed."""

    header_timeout_s = 10.0  # set per server by header_timeout_protocol
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_timer is None:
            self._arm_head_timer()  # the first byte of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head has come (or the request failed): no deadline
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutH11]:
    """HeaderTimeoutH11 with its deadline set to `seconds` (uvicorn builds the protocol itself, from
    the class it is given)."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout_s": seconds})


# ---------------------------------------------------------------------------------------
# ASGI middleware, outermost first


@dataclass
class InFlight:
    """The concurrency limit's counters, shown at /health."""

    limit: int
    now: int = 0
    refused: int = 0

    def stats(self) -> dict:
        return {"in_flight": self.now, "max_concurrent": self.limit, "refused": self.refused}


class ConcurrencyLimit:
    """At most `in_flight.limit` HTTP requests in the app at once, counted from their headers to
    the end of their answer; one more is refused with a 503, a JSON reason and `Retry-After: 1`.
    GET /health is never counted nor refused: it asks nothing of the model, and a probe should
    tell a busy server from a dead one."""

    def __init__(self, app, in_flight: InFlight, limits: Limits):
        self.app, self.in_flight, self.limits = app, in_flight, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        counts = self.in_flight
        if counts.now >= counts.limit:
            counts.refused += 1
            return await refuse(scope, receive, send, self.limits, 503, f"the server is busy: {counts.limit} requests "
                                "are in flight, its limit (--max-concurrent); try again shortly", {"Retry-After": "1"})
        counts.now += 1
        try:
            await self.app(scope, receive, send)
        finally:
            counts.now -= 1


class ApiKeyGuard:
    """Every HTTP route but OPEN_PATHS wants `Authorization: Bearer <key>`; the key is compared with
    `hmac.compare_digest`, whose time does not depend on where the two differ. A request without
    it, or with another key, gets a 401 with a JSON reason and `WWW-Authenticate: Bearer`."""

    def __init__(self, app, key: str, limits: Limits):
        self.app, self.key, self.limits = app, key.encode("ascii"), limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = bearer_token(scope["headers"])
        if given is not None and hmac.compare_digest(given, self.key):
            return await self.app(scope, receive, send)
        detail = ("this server needs an API key: send the header Authorization: Bearer <key>" if given is None
                  else "the API key is wrong")  # fmt: skip
        await refuse(scope, receive, send, self.limits, 401, detail, {"WWW-Authenticate": "Bearer"})


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of the first `Authorization: Bearer <token>` header (the scheme in any case), or None."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


class RequestGuard:
    """A POST body must say it is JSON (415), fit in `max_bytes` (413: by its Content-Length before
    anything is read, else counted as it arrives, chunked included), arrive whole within
    `timeout_s` of the request's headers (408) and be UTF-8 (400). A body that passes is handed on
    whole."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits
        self.max_bytes, self.timeout_s = limits.max_body_bytes, limits.body_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return await refuse(scope, receive, send, self.limits, 415, "send the body as JSON, with Content-Type: "
                                f"application/json (got {media_type or 'none'!r})")
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await reject(scope, send, 413 if declared.isdigit() else 400, self._too_large(declared))
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.timeout_s)
        except TimeoutError:
            return await reject(scope, send, 408, f"the body did not arrive within {self.timeout_s:g} s of the "
                                                  "request's headers (--body-timeout-s)")  # fmt: skip
        if body is None:  # the client went away
            return
        if len(body) > self.max_bytes:
            return await reject(scope, send, 413, self._too_large(None))
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            return await reject(scope, send, 400, f"the body is not valid UTF-8 (byte {e.start}: {e.reason})")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read_body(self, receive) -> bytes | None:
        """The body; where longer than max_bytes, its first max_bytes + 1 bytes, the rest read and
        dropped (so that a client that sends it all before it reads gets the 413, not a reset
        connection); None on a disconnect."""
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")[: self.max_bytes + 1 - len(body)]
            more = message.get("more_body", False)
        return bytes(body)

    def _too_large(self, declared: str | None) -> str:
        if declared is not None and not declared.isdigit():
            return f"Content-Length {declared!r} is not a number of bytes"
        size = f"is {int(declared):,} bytes" if declared else f"went past {self.max_bytes:,} bytes as it came"
        return f"the body {size}; at most {self.max_bytes:,} bytes are accepted (--max-body-bytes)"
