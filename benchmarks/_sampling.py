"""What the benchmark scripts share: the sampling loop (:func:`sampled`), percentiles, resident
memory, the machine, and their logging setup (library versions:
:func:`eri.realtime.session.format.versions`)."""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

T = TypeVar("T")

#: Libraries the viewer benchmarks add to a session's version list (``versions(*VIEWER_DISTS)``).
VIEWER_DISTS = ("PySide6-Essentials", "pyqtgraph")


def sampled(
    items: Iterable[T],
    every_s: float,
    sample: Callable[[float], None] | None = None,
    *,
    seconds: float | None = None,
) -> Iterator[T]:
    """``items`` passed through, calling ``sample(t)`` (t: seconds since the first item was
    asked for) at the start and then every ``every_s`` seconds; ends after ``seconds`` when
    given, else when ``items`` does."""
    t0 = time.monotonic()
    next_sample = t0
    for item in items:
        now = time.monotonic()
        if sample is not None and now >= next_sample:
            sample(now - t0)
            next_sample += every_s
        if seconds is not None and now - t0 >= seconds:
            return
        yield item


def percentiles(values: Iterable[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict:
    """{"p50": ..., "p95": ..., "p99": ...} rounded to 0.01 (None when there are no values)."""
    arr = np.asarray(list(values), np.float64)
    return {f"p{q}": round(float(np.percentile(arr, q)), 2) if arr.size else None for q in qs}


def rss_mb() -> float:
    """Resident memory of this process in MB (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def machine() -> dict:
    """The CPU, core count, platform and the 1-minute load average now."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def setup_logging(log: logging.Logger) -> None:
    """The benchmark's own lines at INFO, ERI Live's only from WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("eri").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
