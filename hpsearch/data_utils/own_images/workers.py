"""Work spread over a process pool, with a progress report: a bar on a terminal, a line every
few seconds in a log.

The pool starts processes with ``spawn``: the caller may be a process that has initialised
CUDA or runs threads (MLflow's), which a ``fork`` would copy in a broken state. It is a
``concurrent.futures`` pool, which raises when a worker dies (killed, out of memory) where
``multiprocessing.Pool`` would start another and wait forever. Small jobs run in this
process, where starting workers would cost more than the work.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import IO, Any

__all__ = ["Progress", "WorkerPool", "default_workers"]

INLINE_BELOW = 512  # files: fewer are probed or decoded in this process


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


class Progress:
    """Counts done items of one phase; reports on ``stream`` (None: silent).

    On a terminal it redraws one bar line at most ten times a second; otherwise it writes
    a line every ``every_s`` seconds, and a last line with the rate when closed.
    """

    def __init__(self, label: str, total: int, stream: IO[str] | None, *,
                 every_s: float = 5.0) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.done = 0
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.every_s = 0.1 if self.tty else every_s
        self.start = self.last = time.perf_counter()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.stream is not None and now - self.last >= self.every_s:
            self.last = now
            self._write(self._line(now), final=False)

    def close(self, extra: str = "") -> float:
        """Report the end; returns the seconds the phase took."""
        elapsed = time.perf_counter() - self.start
        if self.stream is not None:
            rate = self.done / elapsed if elapsed > 0 else 0.0
            self._write(f"{self.label}: {self.done:,} in {elapsed:.1f} s ({rate:,.0f}/s)"
                        + (f"; {extra}" if extra else ""), final=True)
        return elapsed

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = self.done / self.total if self.total else 1.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        text = (f"{self.label}: {self.done:,}/{self.total:,} ({share:.0%}), {rate:,.0f}/s, "
                f"{left:.0f} s left")
        if self.tty:
            filled = int(share * 24)
            text = f"[{'#' * filled}{'.' * (24 - filled)}] {text}"
        return text

    def _write(self, text: str, *, final: bool) -> None:
        assert self.stream is not None
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


class WorkerPool:
    """A process pool started on first use (or never, for small jobs), shared by the phases
    of one load; a context manager that stops it."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else max(1, workers)
        self._pool: Any = None

    def map_chunks(self, func: Callable[[Any], Any], chunks: Sequence[Any], *, size: int,
                   progress: Progress, count: Callable[[Any], int]) -> Iterator[Any]:
        """``func(chunk)`` for every chunk, in any order; ``size`` is the number of items,
        which decides whether workers start at all; ``count(result)``: items done."""
        results: Iterable[Any]
        if self.workers <= 1 or size < INLINE_BELOW:
            results = map(func, chunks)
        else:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"))
            futures = [self._pool.submit(func, chunk) for chunk in chunks]
            results = (future.result() for future in as_completed(futures))
        for result in results:
            progress.advance(count(result))
            yield result

    def close(self, *, cancel: bool = False, wait: bool = True) -> None:
        """Stop the workers (``cancel``: drop the work not started yet; ``wait``: until they
        have exited, else they exit while this process goes on)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel)
            self._pool = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)


def chunked(items: Sequence[Any], workers: int, *, most: int = 256) -> list[Any]:
    """Items in chunks: at least ~8 per worker for balance, at most ``most`` each so progress
    moves."""
    size = max(1, min(most, len(items) // max(1, 8 * workers)))
    return [items[i:i + size] for i in range(0, len(items), size)]
