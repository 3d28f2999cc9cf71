"""Each audio token's features computed once per key, for the streaming engine
(:mod:`eri.realtime.pipeline`).

An audio token is a pure function of its key, the count of MFCC frames finished by its sample
time (:meth:`~eri.models.audio.StreamingFrontEnd.token_keys`); a window slides by one frame per
step, so in steady state only its newest token has a key no earlier step had.
"""

from __future__ import annotations

import numpy as np

from eri.models.audio import StreamingFrontEnd
from eri.realtime.backends import Backend

#: Seconds of token keys the audio feature cache keeps beyond the window's ``context_s``.
AUDIO_CACHE_MARGIN_S = 1.0


class AudioFeatureCache:
    """Audio features per token key (:meth:`StreamingFrontEnd.token_keys`) of one front end.

    :meth:`features` returns a window's features [T, A], encoding only the keys not yet held,
    in one ``backend.encode_audio`` call. Keys more than ``keep`` below the newest key asked
    for are dropped (the window never reaches that far back), so the cache holds at most
    ``keep`` + T entries. :meth:`clear` when the front end is replaced (its keys restart).
    ``encoded`` counts the tokens encoded, ``hits`` the keys served from the cache.
    """

    def __init__(self, backend: Backend, keep: int) -> None:
        self.backend = backend
        self.keep = int(keep)
        self._features: dict[int, np.ndarray] = {}
        self.encoded = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._features)

    def clear(self) -> None:
        self._features.clear()

    def features(self, front: StreamingFrontEnd, keys: np.ndarray) -> np.ndarray:
        """Features [T, A] float32 of the tokens with ``keys`` [T] in ``front``."""
        keys = np.asarray(keys, np.int64)
        wanted = np.unique(keys)
        missing = np.array([k for k in wanted.tolist() if k not in self._features], np.int64)
        if missing.size:
            encoded = self.backend.encode_audio(front.tokens_for_keys(missing))
            for key, row in zip(missing.tolist(), np.asarray(encoded, np.float32)):
                self._features[key] = row
            self.encoded += int(missing.size)
        self.hits += int(keys.size - missing.size)
        out = np.stack([self._features[k] for k in keys.tolist()])
        oldest = int(wanted[-1]) - self.keep
        for key in [k for k in self._features if k < oldest]:
            del self._features[key]
        return out
