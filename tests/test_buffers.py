"""Ring buffer, latest-wins slot and drop-oldest queue: bounds, order, counters, threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from eri.models.spec import nearest_indices
from eri.realtime.buffers import BoundedQueue, LatestSlot, RingBuffer


def test_ring_buffer_fills_then_overwrites_oldest():
    ring = RingBuffer(4, shape=(3,), dtype=np.float32)
    assert len(ring) == 0 and ring.latest() is None
    for i in range(6):
        ring.push(np.full(3, i, dtype=np.float32), time_s=0.1 * i, index=i)
    assert len(ring) == 4
    assert ring.capacity == 4
    assert ring.overwritten == 2 and ring.pushed == 6
    np.testing.assert_array_equal(ring.indices(), [2, 3, 4, 5])
    np.testing.assert_allclose(ring.times(), [0.2, 0.3, 0.4, 0.5])
    np.testing.assert_array_equal(ring.items()[:, 0], [2, 3, 4, 5])
    item, t, idx = ring.latest()
    np.testing.assert_array_equal(item, [5, 5, 5])
    assert t == pytest.approx(0.5) and idx == 5
    assert ring.stats() == {"size": 4, "capacity": 4, "pushed": 6, "overwritten": 2}


def test_ring_buffer_readers_get_copies_not_views():
    ring = RingBuffer(2, shape=2)
    ring.push(np.array([1.0, 2.0]), 0.0, 0)
    items = ring.items()
    items[:] = -1
    ring.latest()[0][:] = -1
    np.testing.assert_array_equal(ring.items(), [[1.0, 2.0]])


def test_ring_buffer_rejects_wrong_shape_and_time_going_back():
    ring = RingBuffer(3, shape=(2,))
    with pytest.raises(ValueError, match="shape"):
        ring.push(np.zeros(3), 0.0, 0)
    ring.push(np.zeros(2), 1.0, 0)
    ring.push(np.zeros(2), 1.0, 1)  # equal times are fine
    with pytest.raises(ValueError, match="time order"):
        ring.push(np.zeros(2), 0.5, 2)
    with pytest.raises(ValueError):
        RingBuffer(0, shape=(2,))


def test_ring_buffer_nearest_matches_spec_rule_after_wraparound():
    ring = RingBuffer(8, shape=(7,))
    for i in range(13):  # wraps: holds frames 5..12
        ring.push(np.full(7, i, dtype=np.float32), time_s=i * 0.125, index=i)
    queries = np.array([0.0, 0.65, 0.6875, 1.01, 1.6, 5.0])
    found = ring.nearest(queries)
    expected = nearest_indices(ring.times(), queries)
    np.testing.assert_array_equal(found.positions, expected)
    np.testing.assert_array_equal(found.indices, [5, 5, 5, 8, 12, 12])  # 0.6875 ties -> earlier
    np.testing.assert_array_equal(found.items[:, 0], found.indices)
    np.testing.assert_allclose(found.times, found.indices * 0.125)
    assert found.items.shape == (6, 7)


def test_ring_buffer_nearest_only_up_to_max_time():
    ring = RingBuffer(8, shape=(1,))
    for i in range(6):
        ring.push(np.full(1, i), time_s=i * 0.5, index=i)
    found = ring.nearest(np.array([0.0, 1.1, 2.4]), max_time=1.0)
    np.testing.assert_array_equal(found.indices, [0, 2, 2])  # items at 1.5 s and later excluded
    assert ring.nearest(np.array([0.0]), max_time=-1.0) is None


def test_ring_buffer_nearest_on_empty_is_none_and_clear_keeps_counters():
    ring = RingBuffer(2, shape=(1,))
    assert ring.nearest(np.array([0.0])) is None
    for i in range(3):
        ring.push(np.zeros(1), i, i)
    ring.clear()
    assert len(ring) == 0 and ring.overwritten == 1
    ring.push(np.ones(1), 0.0, 0)  # after clear, time may start again
    assert ring.indices().tolist() == [0]


def test_ring_buffer_concurrent_writer_and_reader_stay_consistent():
    ring = RingBuffer(64, shape=(16,))
    n = 5000
    errors: list[str] = []

    def writer():
        for i in range(n):
            ring.push(np.full(16, i, dtype=np.float32), time_s=i * 1e-3, index=i)

    def reader():
        while not done.is_set():
            items, times, indices = ring.snapshot()
            if len(indices) == 0:
                continue
            if not (np.all(np.diff(indices) == 1) and np.all(items[:, 0] == indices)):
                errors.append("torn snapshot")
            if not np.allclose(times, indices * 1e-3):
                errors.append("times do not match indices")
            if len(indices):
                ring.nearest(np.array([times[-1]]))

    done = threading.Event()
    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    writer()
    done.set()
    for t in threads:
        t.join()
    assert not errors
    assert ring.pushed == n and ring.overwritten == n - 64 and len(ring) == 64


def test_latest_slot_newest_wins_and_counts_replaced():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.get(timeout=0.01) is None
    for i in range(5):
        slot.put(i)
    assert slot.replaced == 4 and slot.put_count == 5 and len(slot) == 1
    assert slot.get(timeout=0) == 4
    assert slot.get(timeout=0.01) is None
    slot.put(5)
    assert slot.get() == 5
    assert slot.replaced == 4  # taken items are not counted as replaced


def test_latest_slot_get_blocks_until_put_and_close_wakes_readers():
    slot: LatestSlot[str] = LatestSlot()
    threading.Timer(0.05, slot.put, args=("frame",)).start()
    start = time.monotonic()
    assert slot.get(timeout=2.0) == "frame"
    assert time.monotonic() - start < 1.5

    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(slot.get(timeout=5.0)))
    reader.start()
    time.sleep(0.05)
    slot.close()
    reader.join(timeout=2.0)
    assert not reader.is_alive() and got == [None] and slot.closed


def test_bounded_queue_drops_oldest_and_counts():
    queue: BoundedQueue[int] = BoundedQueue(3)
    for i in range(5):
        queue.put(i)  # never blocks
    assert queue.dropped == 2 and queue.put_count == 5 and len(queue) == 3
    assert queue.get(timeout=0) == 2
    assert queue.drain() == [3, 4]
    assert queue.drain() == []
    assert queue.get(timeout=0.01) is None
    with pytest.raises(ValueError):
        BoundedQueue(0)


def test_bounded_queue_get_waits_and_close_returns_rest_then_none():
    queue: BoundedQueue[int] = BoundedQueue(2)
    threading.Timer(0.05, queue.put, args=(7,)).start()
    assert queue.get(timeout=2.0) == 7
    assert queue.wait(timeout=0.01) is False
    queue.put(8)
    assert queue.wait(timeout=0.01) is True
    queue.close()
    assert queue.get(timeout=1.0) == 8
    assert queue.get(timeout=1.0) is None


def test_bounded_queue_producer_never_waits_for_a_slow_consumer():
    queue: BoundedQueue[int] = BoundedQueue(10)
    start = time.monotonic()
    for i in range(10_000):
        queue.put(i)
    assert time.monotonic() - start < 1.0
    assert queue.dropped == 10_000 - 10
    assert queue.drain() == list(range(9_990, 10_000))
