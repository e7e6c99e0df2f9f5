"""The limits of `minbert serve`: what one request may ask, and how requests are batched. Apart from
serve.py (which needs FastAPI) so that the CLI can show the defaults without the `serve` extra."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one request may ask, and how requests are batched (`minbert serve`'s flags)."""

    max_batch: int = 64  # inputs in one forward, gathered from concurrent requests (1: no batching)
    batch_wait_ms: float = 5.0  # how long the first waiting request waits for others (0: take what is queued)
    max_texts: int = 64  # texts (sentiment) or pairs (paraphrase, similarity) in one request
    max_chars: int = 2000  # characters in one text
    max_body_bytes: int = 256 * 1024  # request body, before it is parsed

    def __post_init__(self):
        for name in ("max_batch", "max_texts", "max_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms must be between 0 and 1000, not {self.batch_wait_ms}")
