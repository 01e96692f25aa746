"""Progress of a long stage in the user's units (rows, tokens), whatever Ray prints about blocks:
a line redrawn in place on a terminal, a log line every ``every_s`` seconds otherwise."""

from __future__ import annotations

import json
import logging
import queue
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
    stalled job can be stopped, with the actors Ray Data may start to retry their blocks)."""

    def __init__(self):
        self.rows = self.tokens = 0
        self.parts: list[str] = []  # part entries (JSON) not yet taken by the driver
        self.done: dict[str, tuple[int, bool, str]] = {}  # query_id -> (n_tokens, truncated, part entry)
        self.handles: list = []
        self.halted = False  # set by the stall check: an actor that takes a block after it refuses it

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

    def halt(self) -> None:
        self.halted = True

    def is_halted(self) -> bool:
        return self.halted

    def actors(self) -> list:
        return list(self.handles)


def part_entries(jsons) -> dict[str, dict]:
    """The part entries (JSON: name, rows, digests) the actors reported, by part name."""
    out = {}
    for p in jsons:
        if p:
            e = json.loads(p)
            out[e["name"]] = {"rows": e["rows"], "sha256": e["sha256"]}
    return out


class GaveUp(Exception):
    """The driver stopped waiting for a stalled pool (``StallWatch.given_up``)."""


def read_pool(batches, watch: "StallWatch"):
    """``batches`` (the pool's iteration), read on a thread of its own so that the driver is never
    held by it: once the stall check has fired, the actors are killed and the counter halted, and
    Ray Data's iteration fails; should it not (a block retried on an actor that never reports),
    the driver gives up after a grace and the job fails all the same. The reader thread is left to
    the process's end."""
    q: queue.SimpleQueue = queue.SimpleQueue()

    def pump() -> None:
        try:
            for b in batches:
                q.put(("batch", b))
            q.put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the driver, which raises it
            q.put(("error", e))

    threading.Thread(target=pump, name="extract-results", daemon=True).start()
    while True:
        try:
            kind, value = q.get(timeout=1.0)
        except queue.Empty:
            if watch.given_up():
                raise GaveUp() from None
            continue
        if kind == "end":
            return
        if kind == "error":
            raise value
        yield value


class StallWatch:
    """A driver thread: commits the parts the actors report, and stops the actors when no query
    has finished and no actor has come up for ``stall_s``."""

    def __init__(self, ray, counter, commit: Callable[[dict], None], stall_s: float):
        self.ray, self.counter, self.commit, self.stall_s = ray, counter, commit, stall_s
        self.stalled = False
        self.stalled_at: float | None = None  # monotonic time the stall was declared
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extract-watch", daemon=True)

    def take(self) -> None:
        self.commit(part_entries(self.ray.get(self.counter.take_parts.remote(), timeout=60)))

    def _run(self) -> None:
        last, moved = None, time.monotonic()
        while not self._stop.wait(min(2.0, self.stall_s / 4)):
            try:
                now = self.ray.get(self.counter.moves.remote(), timeout=60)
                self.take()
            except Exception as e:  # noqa: BLE001 - the pool's own errors surface in the driver's loop
                log.debug("extract: progress poll failed: %s", e)
                continue
            if now != last:
                last, moved = now, time.monotonic()
            elif time.monotonic() - moved >= self.stall_s:
                self.stalled, self.stalled_at = True, time.monotonic()
                # Halt first: Ray Data may retry a killed actor's block on a new actor, which would
                # encode until it hangs too, with nobody left watching. A halted counter makes that
                # actor refuse the block, and the pool's iteration fails.
                self.ray.get(self.counter.halt.remote(), timeout=60)
                for handle in self.ray.get(self.counter.actors.remote(), timeout=60):
                    self.ray.kill(handle, no_restart=True)  # the pool's iteration then fails at once
                return

    def given_up(self) -> bool:
        """The stall was declared and the pool's iteration has not failed within the grace that
        follows (``stall_s``, at most 60 s): the driver stops waiting for it."""
        return self.stalled_at is not None and time.monotonic() - self.stalled_at > min(60.0, self.stall_s)

    def __enter__(self) -> "StallWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
