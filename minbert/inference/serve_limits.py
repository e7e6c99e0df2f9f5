"""The limits of `minbert serve`: what one request may ask, how requests are batched, what a slow or
idle client may hold; and who may ask (`Access`: the address, the API key). Apart from serve.py
(which needs FastAPI) so that the CLI can show the defaults and refuse bad ones without the
`serve` extra."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

API_KEY_ENV = "MINBERT_API_KEY"
MIN_KEY_CHARS = 16
KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: it travels in an HTTP header


@dataclass(frozen=True)
class Limits:
    """What one request may ask, how requests are batched, and what a slow or idle client may hold
    (`minbert serve`'s flags)."""

    max_batch: int = 64  # inputs in one forward, gathered from concurrent requests (1: no batching)
    batch_wait_ms: float = 5.0  # how long the first waiting request waits for others (0: take what is queued)
    max_texts: int = 64  # texts (sentiment) or pairs (paraphrase, similarity) in one request
    max_chars: int = 2000  # characters in one text
    max_body_bytes: int = 256 * 1024  # request body, before it is parsed
    max_concurrent: int = 64  # requests in flight at once; one more gets a 503 (GET /health is never refused)
    header_timeout_s: float = 10.0  # from a connection's first byte (or its opening) to a request's last header
    body_timeout_s: float = 30.0  # from a request's last header to its body's last byte
    keep_alive_s: float = 5.0  # an idle connection between requests is closed after this

    def __post_init__(self):
        for name in ("max_batch", "max_texts", "max_chars", "max_body_bytes", "max_concurrent"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be between 0 and 1000, not {self.batch_wait_ms}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not 0 < getattr(self, name) <= 3600:  # NaN fails this too
                raise ValueError(f"{name} must be over 0 and at most 3600 seconds, not {getattr(self, name)}")


@dataclass(frozen=True)
class Access:
    """Where `minbert serve` listens and who may ask it: with `api_key`, every route but `/` (the
    page, which holds no data) and `/health` wants `Authorization: Bearer <api_key>`. A host that is
    not loopback needs a key, or `no_auth` said on purpose."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    no_auth: bool = False

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port (0-65535)")
        if self.api_key is not None:
            check_api_key(self.api_key)
            if self.no_auth:
                raise ValueError(f"--no-auth and an API key (--api-key or {API_KEY_ENV}) contradict each other: "
                                 "give one or the other")  # fmt: skip
        elif not self.no_auth and not is_loopback(self.host):
            raise ValueError(f"--host {self.host} is not a loopback address: anyone who can reach port {self.port} "
                             f"could use the model; set {API_KEY_ENV} (or --api-key), or pass --no-auth to serve "
                             "it without a key on purpose")  # fmt: skip

    @property
    def exposed_without_key(self) -> bool:
        return self.api_key is None and not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; any other name or address counts as reachable from outside."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_api_key(key: str) -> None:
    """A ValueError naming what is wrong with `key`; nothing for a usable one (the key itself is never quoted)."""
    if not key:
        raise ValueError(f"the API key (--api-key or {API_KEY_ENV}) is empty: give a key, or none")
    if not KEY_CHARS.fullmatch(key):
        raise ValueError("the API key must be printable ASCII without spaces (it is sent in an HTTP header)")
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"the API key is {len(key)} characters; use at least {MIN_KEY_CHARS}, e.g. "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))'")  # fmt: skip
