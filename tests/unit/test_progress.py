"""Progress lines of long stages (jobs.progress): rows, tokens/s, elapsed and ETA."""

import io
import logging
import threading
import time

import pytest

from jobs.progress import Progress, describe


def test_describe_says_rows_rate_and_eta():
    line = describe("extract", 1024, 4096, 61_440, 40.0)
    assert line == "extract: 1,024/4,096 rows (25%), 1,536 tokens/s, 40s elapsed, ETA 2m00s"
    assert describe("extract", 0, 10, 0, 0.0) == "extract: 0/10 rows (0%), 0s elapsed"
    assert "ETA" not in describe("extract", 10, 10, 5, 3700.0) and "1h01m elapsed" in describe("extract", 10, 10, 5, 3700.0)
    assert describe("extract", 12, 10, 5, 1.0).startswith("extract: 10/10 rows (100%)")  # a retried call counts twice
    # Rate and ETA from the first rows done on (the start-up before them is not the stage's speed).
    line = describe("extract", 1024, 4096, 61_440, 40.0, since=(512, 30_720, 30.0))
    assert line == "extract: 1,024/4,096 rows (25%), 3,072 tokens/s, 40s elapsed, ETA 1m00s"
    assert describe("extract", 512, 4096, 30_720, 30.0, since=(512, 30_720, 30.0)).endswith("ETA 3m30s")


def test_progress_logs_periodic_lines_and_the_last_one(caplog):
    done = [0]
    with caplog.at_level(logging.INFO, logger="jobs.progress"):
        with Progress("extract", 30, lambda: (done[0], 10 * done[0]), every_s=0.2, stream=io.StringIO()):
            for _ in range(3):
                time.sleep(0.6)
                done[0] += 10
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 2 and lines[-1].startswith("extract: 30/30 rows (100%)")


def test_progress_redraws_one_line_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with Progress("extract", 5, lambda: (5, 50), stream=out):
        time.sleep(1.3)
    assert "\rextract: 5/5 rows (100%)" in out.getvalue() and out.getvalue().endswith("\r\033[K")


class _Watch:
    """Stands for jobs.progress.StallWatch: gives up once told to."""

    def __init__(self):
        self.gave_up = False

    def given_up(self) -> bool:
        return self.gave_up


def test_the_driver_reads_every_batch_and_an_error_of_the_pool():
    from jobs.progress import read_pool

    assert list(read_pool(iter([1, 2, 3]), _Watch())) == [1, 2, 3]

    def failing():
        yield 1
        raise RuntimeError("actor died")

    got = []
    with pytest.raises(RuntimeError, match="actor died"):
        for b in read_pool(failing(), _Watch()):
            got.append(b)
    assert got == [1]


def test_the_driver_gives_up_on_a_stalled_pool_whose_iteration_never_ends():
    from jobs.progress import GaveUp, read_pool

    release = threading.Event()

    def hung():  # a block retried on an actor that never reports: the iteration neither yields nor fails
        yield 1
        release.wait(600)

    watch, got = _Watch(), []
    threading.Timer(1.5, lambda: setattr(watch, "gave_up", True)).start()
    t0 = time.monotonic()
    with pytest.raises(GaveUp):
        for b in read_pool(hung(), watch):
            got.append(b)
    release.set()
    assert got == [1] and time.monotonic() - t0 < 10


def test_a_halted_counter_says_so_and_keeps_what_was_committed():
    from jobs.progress import ProgressCounter

    c = ProgressCounter()
    c.add_part('{"name": "p0"}', {"q1": (5, False)})
    assert not c.is_halted()
    c.halt()
    assert c.is_halted() and c.committed(["q1", "q2"]) == {"q1": (5, False, '{"name": "p0"}')}
