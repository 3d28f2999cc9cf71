"""The face crops of one clip, held until the clip's end (its window's sample times depend on
its duration) in bounded memory: :class:`CropStore`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SPILL_BYTES", "SPILL_PREFIX", "CropStore"]

#: Face crops of one clip held in memory before they go to a temporary file (bytes): 891 crops
#: of 112 px, about 30 s at 30 fps, so clips of the usual length never touch the disk.
SPILL_BYTES = 32 * 2**20
#: Name of a spill file (it has none on Linux; where it has, the stale-file clean-up matches it).
SPILL_PREFIX = ".crops-"


class CropStore:
    """The face crops of one clip in frame order, K x uint8 [S, S, 3]: up to ``memory_bytes`` in
    one buffer, then all of them in an unnamed temporary file in ``folder`` (None: the system's
    temporary folder), so memory stays bounded however long the clip. ``memory_bytes`` None:
    everything in memory. Use as a context manager: the file goes away on close, and with the
    process (it is unlinked, or never had a name) if the worker is killed."""

    def __init__(self, memory_bytes: int | None, folder: Path | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.folder = folder
        self.shape: tuple[int, ...] | None = None
        self.file: Any = None  # the spill file once the buffer is full
        self._buffer: np.ndarray | None = None  # [capacity, S, S, 3] uint8 until then
        self._n = 0

    def __enter__(self) -> CropStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        self._buffer = None
        if self.file is not None:
            self.file.close()

    def append(self, crop: np.ndarray) -> None:
        """Add the next crop, uint8 [S, S, 3] (the first one sets S)."""
        if self.shape is None:
            self.shape = crop.shape
            rows = 256 if self.memory_bytes is None else self.memory_bytes // crop.nbytes
            self._buffer = np.empty((rows, *crop.shape), np.uint8)  # pages used as filled
        if crop.shape != self.shape or crop.dtype != np.uint8:
            raise ValueError(f"crop {crop.shape} {crop.dtype}, expected {self.shape} uint8")
        if self._buffer is not None and self._n == len(self._buffer):
            if self.memory_bytes is None:
                self._buffer = np.concatenate([self._buffer, np.empty_like(self._buffer)])
            else:
                self._spill()
        if self._buffer is not None:
            self._buffer[self._n] = crop
        else:
            self.file.write(np.ascontiguousarray(crop).data)
        self._n += 1

    def _spill(self) -> None:
        self.file = tempfile.TemporaryFile(
            dir=self.folder, prefix=SPILL_PREFIX, suffix=f".{os.getpid()}.tmp"
        )
        assert self._buffer is not None
        self.file.write(self._buffer[: self._n].data)
        self._buffer = None

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The crops ``rows`` [T] (indices in append order): uint8 [T, S, S, 3]."""
        assert self.shape is not None
        out = np.empty((len(rows), *self.shape), np.uint8)
        if self._buffer is not None:
            out[:] = self._buffer[rows]
            return out
        self.file.flush()
        size = out[0].nbytes
        for i, row in enumerate(rows):
            self.file.seek(int(row) * size)
            if self.file.readinto(out[i]) != size:
                raise OSError(f"the crop spill file in {self.folder} was cut short")
        return out
