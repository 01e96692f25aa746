"""Progress of a long stage in the user's units (rows, tokens), whatever Ray prints about blocks:
a line redrawn in place on a terminal, a log line every ``every_s`` seconds otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("jobs.progress")


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe(label: str, rows: int, total: int, tokens: int, seconds: float,
             since: tuple[int, int, float] | None = None) -> str:
    """'extract: 1,024/3,178 rows (32%), 1,520 tokens/s, 41s elapsed, ETA 1m27s'.

    ``since`` = (rows, tokens, seconds) when the first rows were done: the rate and the ETA then
    count the work after it, not the start-up before it (actor start, model load)."""
    rows = min(rows, total)
    text = f"{label}: {rows:,}/{total:,} rows ({100 * rows / max(total, 1):.0f}%)"
    r, t, s = rows, tokens, seconds
    if since is not None and rows > since[0] and seconds > since[2]:
        r, t, s = rows - since[0], tokens - since[1], seconds - since[2]
    if s > 0 and t:
        text += f", {t / s:,.0f} tokens/s"
    text += f", {_duration(seconds)} elapsed"
    if 0 < rows < total and s > 0 and r > 0:
        text += f", ETA {_duration(s * (total - rows) / r)}"
    return text


class Progress:
    """Polls ``read() -> (rows, tokens)`` from a thread while a stage runs; use as a with-block.

    On a terminal (stderr a tty) the line is redrawn every second; in a log, one line every
    ``every_s`` seconds. The final line is always logged, so a log shows where the stage ended."""

    def __init__(self, label: str, total: int, read: Callable[[], tuple[int, int]], every_s: float = 30.0,
                 stream=None):
        self.label, self.total, self.read, self.every_s = label, total, read, every_s
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._last = (0, 0)
        self._first: tuple[int, int, float] | None = None  # (rows, tokens, seconds) at the first poll with rows done

    def __enter__(self) -> "Progress":
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"progress-{self.label}", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        try:
            self._last = self.read()
        except Exception:  # noqa: BLE001 - progress is display only; the stage reports its own errors
            return
        if self._first is None and self._last[0] > 0:
            self._first = (*self._last, time.perf_counter() - self._t0)

    def line(self) -> str:
        rows, tokens = self._last
        return describe(self.label, rows, self.total, tokens, time.perf_counter() - self._t0, self._first)

    def _run(self) -> None:
        next_log = self._t0 + self.every_s
        while not self._stop.wait(1.0 if self.tty else min(5.0, self.every_s)):
            self._poll()
            if self.tty:
                self.stream.write("\r" + self.line() + "\033[K")
                self.stream.flush()
            elif time.perf_counter() >= next_log:
                log.info("%s", self.line())
                next_log = time.perf_counter() + self.every_s

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
        if exc[0] is None:
            log.info("%s", self.line())


class ProgressCounter:
    """What the extraction actors have done, kept in a small Ray actor of no CPU that the driver polls:
    rows and tokens after each forward batch (display, and the stall check), the part files each
    actor has written (the driver commits them to the manifest as they come), which rows those
    hold (so an actor retrying a lost actor's block skips them), and the actors themselves (so a
    stalled job can be stopped)."""

    def __init__(self):
        self.rows = self.tokens = 0
        self.parts: list[str] = []  # part entries (JSON) not yet taken by the driver
        self.done: dict[str, tuple[int, bool, str]] = {}  # query_id -> (n_tokens, truncated, part entry)
        self.handles: list = []

    def add(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.tokens += tokens

    def read(self) -> tuple[int, int]:
        return self.rows, self.tokens

    def moves(self) -> tuple[int, int, int]:
        """What counts as progress for the stall check: rows, tokens, and actors that came up."""
        return self.rows, self.tokens, len(self.handles)

    def add_part(self, entry: str, rows: dict[str, tuple[int, bool]]) -> None:
        self.parts.append(entry)
        self.done.update({q: (n, t, entry) for q, (n, t) in rows.items()})

    def take_parts(self) -> list[str]:
        out, self.parts = self.parts, []
        return out

    def committed(self, query_ids: list[str]) -> dict[str, tuple[int, bool, str]]:
        return {q: self.done[q] for q in query_ids if q in self.done}

    def register(self, handle) -> None:
        self.handles.append(handle)

    def actors(self) -> list:
        return list(self.handles)
