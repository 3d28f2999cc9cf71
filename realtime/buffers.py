"""Bounded, thread-safe buffers between capture, inference and the consumers.

Everything here has a fixed capacity chosen at construction: nothing grows when a consumer falls
behind. Instead each buffer keeps the newest data and counts what it threw away, so a slow
inference thread shows up as a counter, never as memory growth or a stalled camera.

- :class:`RingBuffer`: the last ``capacity`` items of one fixed shape and dtype (per-frame
  features [D], outputs [7]) with a float64 time and an int64 index each, preallocated.
- :class:`LatestSlot`: a one-item mailbox where the newest item wins (camera frames).
- :class:`BoundedQueue`: a FIFO whose ``put`` never blocks and drops the oldest item when full
  (microphone chunks).
"""

from __future__ import annotations

import collections
import threading
from typing import Generic, NamedTuple, TypeVar

import numpy as np

from eri.models.spec import nearest_indices

T = TypeVar("T")


class Lookup(NamedTuple):
    """What :meth:`RingBuffer.nearest` found for each query time."""

    items: np.ndarray  #: [Q, *shape] copies of the nearest items
    times: np.ndarray  #: [Q] float64 times of those items
    indices: np.ndarray  #: [Q] int64 indices (e.g. frame numbers) of those items
    positions: np.ndarray  #: [Q] int64 positions in chronological order (0 = oldest held)


class RingBuffer:
    """The newest ``capacity`` items of shape ``shape`` and dtype ``dtype``, with time and index.

    Storage is allocated once: items [capacity, *shape], times [capacity] float64 and indices
    [capacity] int64. ``push`` overwrites the oldest item when full and counts it in
    ``overwritten``. Items must be pushed in nondecreasing time order (the nearest-time lookup
    relies on it). All methods take one lock, so one thread may push while another reads; every
    reader returns copies, never views into the storage.
    """

    def __init__(self, capacity: int, shape: tuple[int, ...] | int = (), dtype=np.float32) -> None:
        if capacity < 1:
            raise ValueError(f"RingBuffer capacity must be >= 1, got {capacity}.")
        self.capacity = int(capacity)
        self.shape: tuple[int, ...] = (shape,) if isinstance(shape, int) else tuple(shape)
        self.dtype = np.dtype(dtype)
        self._items = np.zeros((self.capacity, *self.shape), dtype=self.dtype)
        self._times = np.zeros(self.capacity, dtype=np.float64)
        self._indices = np.zeros(self.capacity, dtype=np.int64)
        self._start = 0  # position of the oldest item
        self._count = 0
        self._lock = threading.Lock()
        self.pushed = 0  #: items ever pushed
        self.overwritten = 0  #: items lost to the capacity bound

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def push(self, item: np.ndarray, time_s: float, index: int) -> None:
        """Append ``item`` [*shape] at ``time_s``; the oldest item goes when full.

        Raises ValueError if the item has the wrong shape or ``time_s`` is older than the newest
        item held (a ring that is not time ordered would give wrong nearest-time lookups).
        """
        arr = np.asarray(item)
        if arr.shape != self.shape:
            raise ValueError(f"RingBuffer expects items of shape {self.shape}, got {arr.shape}.")
        with self._lock:
            if self._count:
                newest = self._times[(self._start + self._count - 1) % self.capacity]
                if time_s < newest:
                    raise ValueError(
                        f"RingBuffer items must be pushed in time order: {time_s:.6f} s came "
                        f"after {newest:.6f} s."
                    )
            if self._count < self.capacity:
                pos = (self._start + self._count) % self.capacity
                self._count += 1
            else:
                pos = self._start
                self._start = (self._start + 1) % self.capacity
                self.overwritten += 1
            self._items[pos] = arr
            self._times[pos] = time_s
            self._indices[pos] = index
            self.pushed += 1

    def clear(self) -> None:
        """Forget every item (the counters stay)."""
        with self._lock:
            self._start = 0
            self._count = 0

    def _order(self) -> np.ndarray:
        """Storage positions [count] from the oldest item to the newest (lock held)."""
        return (self._start + np.arange(self._count)) % self.capacity

    def latest(self) -> tuple[np.ndarray, float, int] | None:
        """(item copy [*shape], time_s, index) of the newest item, or None when empty."""
        with self._lock:
            if not self._count:
                return None
            pos = (self._start + self._count - 1) % self.capacity
            return self._items[pos].copy(), float(self._times[pos]), int(self._indices[pos])

    def times(self) -> np.ndarray:
        """Times [N] float64, oldest first."""
        with self._lock:
            return self._times[self._order()]

    def indices(self) -> np.ndarray:
        """Indices [N] int64, oldest first."""
        with self._lock:
            return self._indices[self._order()]

    def items(self) -> np.ndarray:
        """Items [N, *shape], oldest first."""
        with self._lock:
            return self._items[self._order()]

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items [N, *shape], times [N], indices [N]), oldest first, taken atomically."""
        with self._lock:
            order = self._order()
            return self._items[order], self._times[order], self._indices[order]

    def nearest(self, query_times: np.ndarray, max_time: float | None = None) -> Lookup | None:
        """For each query time [Q], the held item nearest in time (ties go to the older one).

        Uses :func:`models.spec.nearest_indices`, the same rule training uses. With
        ``max_time`` only items at or before it are candidates. Copies only the Q picked items.
        Returns None when there is no candidate (an empty buffer, or none by ``max_time``).
        """
        queries = np.asarray(query_times, dtype=np.float64)
        with self._lock:
            order = self._order()
            times = self._times[order]
            if max_time is not None:
                order = order[: int(np.searchsorted(times, max_time + 1e-9, side="right"))]
                times = times[: order.size]
            if not order.size:
                return None
            positions = nearest_indices(times, queries)
            picked = order[positions]
            return Lookup(
                items=self._items[picked],
                times=self._times[picked],
                indices=self._indices[picked],
                positions=positions,
            )

    def stats(self) -> dict[str, int]:
        """Counters: size, capacity, pushed, overwritten."""
        with self._lock:
            return {
                "size": self._count,
                "capacity": self.capacity,
                "pushed": self.pushed,
                "overwritten": self.overwritten,
            }


class _Closable:
    """close() / closed for the blocking buffers (they set ``_cond`` and ``_closed``)."""

    _cond: threading.Condition
    _closed: bool

    def close(self) -> None:
        """Wake all waiting readers; later ``get`` calls return what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class LatestSlot(_Closable, Generic[T]):
    """A one-item mailbox: ``put`` replaces what was not yet taken, ``get`` takes the newest.

    ``replaced`` counts items that were overwritten before anyone took them (skipped camera
    frames). ``close`` wakes every waiting ``get``, which then returns None.
    """

    def __init__(self) -> None:
        self._item: T | None = None
        self._full = False
        self._closed = False
        self._cond = threading.Condition()
        self.put_count = 0  #: items ever put
        self.replaced = 0  #: items overwritten before a get took them

    def put(self, item: T) -> None:
        """Store ``item``, replacing (and counting) any item not yet taken. Never blocks."""
        with self._cond:
            if self._full:
                self.replaced += 1
            self._item = item
            self._full = True
            self.put_count += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """Take the newest item, waiting up to ``timeout`` seconds (None = forever).

        Returns None on timeout or once the slot is closed and empty.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def __len__(self) -> int:
        with self._cond:
            return int(self._full)


class BoundedQueue(_Closable, Generic[T]):
    """A fixed-capacity FIFO whose ``put`` never blocks: when full it drops the OLDEST item.

    Meant for real-time producers (an audio callback) that must never wait on a consumer.
    ``dropped`` counts the items lost to the bound.
    """

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"BoundedQueue maxlen must be >= 1, got {maxlen}.")
        self.maxlen = int(maxlen)
        self._items: collections.deque[T] = collections.deque(maxlen=self.maxlen)
        self._closed = False
        self._cond = threading.Condition()
        self.put_count = 0  #: items ever put
        self.dropped = 0  #: oldest items discarded because the queue was full

    def put(self, item: T) -> None:
        """Append ``item``; if the queue is full the oldest item is dropped and counted."""
        with self._cond:
            if len(self._items) == self.maxlen:
                self.dropped += 1
            self._items.append(item)  # deque(maxlen) discards the oldest itself
            self.put_count += 1
            self._cond.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """Take the oldest item, waiting up to ``timeout`` seconds; None on timeout or close."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            return self._items.popleft() if self._items else None

    def drain(self) -> list[T]:
        """Take every queued item at once, oldest first (never blocks)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until an item is queued or the queue is closed; True if an item is queued."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout)
            return bool(self._items)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
