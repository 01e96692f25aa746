"""A test hook for the extraction actors (``run_extract(..., hook=SlowEncoder(...))``): the real
encoder, made slow on purpose, or stuck after some calls. Production code has no sleep."""

from __future__ import annotations

import time


class SlowEncoder:
    """Wraps each actor's encoder: ``delay_s`` per query before each call, and after
    ``stuck_after`` calls every further call hangs (a node that stopped making progress)."""

    def __init__(self, delay_s: float = 0.0, stuck_after: int | None = None):
        self.delay_s, self.stuck_after = delay_s, stuck_after

    def __call__(self, encoder):
        return _Slow(encoder, self.delay_s, self.stuck_after)


class _Slow:
    def __init__(self, inner, delay_s: float, stuck_after: int | None):
        self.inner, self.delay_s, self.stuck_after, self.calls = inner, delay_s, stuck_after, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def extract(self, texts, progress=None):
        self.calls += 1
        if self.stuck_after is not None and self.calls > self.stuck_after:
            time.sleep(24 * 3600)
        time.sleep(self.delay_s * len(texts))
        return self.inner.extract(texts, progress)
