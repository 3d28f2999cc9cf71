"""Calibration data: face crops for the frame encoder, windows for the audio encoder and the head.

A window holds the raw audio tokens [T, F] of its samples; the audio encoder calibrates on
those tokens, and the head on their fp32 features (:meth:`CalibrationSet.graph_inputs` runs the
fp32 audio encoder), so the head sees the features the fp32 encoder gives live.

Two sources:

- :func:`from_arrays`: arrays given directly (tests, scripts);
- :func:`from_media`: a folder of media files run through the real pipeline
  (``eri.realtime.pipeline.StreamingEngine`` with the bundle's face tracker, crop and audio front
  end, driven by ``run_offline``). A :class:`RecordingBackend` wraps the fp32 torch backend and
  keeps a uniform random sample (reservoir) of the crops the encoder sees and of the windows the
  head sees (with each window's raw audio tokens), so calibration data is exactly what
  inference feeds the graphs.

:class:`ArrayDataReader` hands either set to ONNX Runtime's quantizer in small batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from eri.errors import EriError
from eri.models.export import (
    AUDIO_FEATURES,
    AUDIO_PRESENT,
    AUDIO_TOKENS,
    FACES,
    VISUAL,
    VISUAL_PRESENT,
)

log = logging.getLogger(__name__)

#: Media files :func:`from_media` reads from a folder (the suffixes the file source opens).
MEDIA_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".wav", ".mp3"})
#: The video file inside a recorded session folder.
SESSION_VIDEO = "video.mp4"
#: Default sample sizes: enough for stable int8 ranges of these graphs, seconds of calibration.
DEFAULT_FACES, DEFAULT_WINDOWS = 256, 256
#: Rows per batch the data reader feeds the calibrator.
READER_BATCH = 8
#: Seed of the reservoir sampling (the same media give the same calibration set).
SAMPLE_SEED = 0

HEAD_INPUTS = (VISUAL, AUDIO_FEATURES, AUDIO_PRESENT, VISUAL_PRESENT)


class CalibrationError(EriError, ValueError):
    """Calibration cannot go on; the message names the data or cache and the fix."""


@dataclass
class CalibrationSet:
    """Calibration inputs keyed by ONNX input name.

    ``faces`` [N, 3, S, S] float32 in [0, 1] for the frame encoder; ``windows`` holds the head's
    inputs: visual [B, T, D], and for audio models audio_tokens [B, T, F] and audio_present [B],
    and visual_present [B] (float32, 1 = present).
    """

    faces: np.ndarray
    windows: dict[str, np.ndarray]
    source: str = "arrays"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.faces = np.ascontiguousarray(self.faces, np.float32)
        self.windows = {k: np.ascontiguousarray(v, np.float32) for k, v in self.windows.items()}
        if self.faces.ndim != 4 or self.faces.shape[1] != 3 or len(self.faces) == 0:
            raise CalibrationError(
                f"Calibration faces must be a non-empty [N, 3, S, S] array, got shape "
                f"{self.faces.shape}; pass face crops in the model's tensor layout."
            )
        if VISUAL not in self.windows or self.windows[VISUAL].ndim != 3:
            raise CalibrationError(
                "Calibration windows need 'visual' [B, T, D]; pass the head's inputs by name."
            )
        rows = {k: len(v) for k, v in self.windows.items()}
        if len(set(rows.values())) != 1:
            raise CalibrationError(
                f"Calibration windows disagree on the batch size {rows}; give every head input "
                "the same number of rows."
            )

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    @property
    def num_windows(self) -> int:
        return len(self.windows[VISUAL])

    def graph_inputs(
        self, graph: str, audio_encoder: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The arrays of one graph, keyed by its input names: ``"frame_encoder"`` -> {faces},
        ``"audio_encoder"`` -> {audio_tokens [N, F]: the windows' distinct tokens, N a multiple
        of the reader's batch},
        ``"head"`` -> the windows with audio_features [B, T, A] = ``audio_encoder(tokens
        [N, F]) -> [N, A]`` (the fp32 audio encoder) in place of their tokens."""
        if graph == "frame_encoder":
            return {FACES: self.faces}
        tokens = self.windows.get(AUDIO_TOKENS)
        if graph == "audio_encoder":
            if tokens is None:
                raise CalibrationError(
                    f"Calibration data from {self.source} has no audio tokens; run `eri "
                    "calibrate` again for this model."
                )
            distinct = np.unique(tokens.reshape(-1, tokens.shape[-1]), axis=0)
            # Whole reader batches only: ONNX Runtime's histogram calibrators (entropy,
            # percentile) stack the batches, which must be of one size.
            keep = len(distinct) - len(distinct) % READER_BATCH or len(distinct)
            return {AUDIO_TOKENS: distinct[:keep]}
        windows = dict(self.windows)
        if tokens is not None:
            if audio_encoder is None:
                raise ValueError("the head's calibration inputs need the fp32 audio encoder")
            b, t = tokens.shape[:2]
            features = audio_encoder(tokens.reshape(b * t, -1))
            windows[AUDIO_FEATURES] = np.asarray(features, np.float32).reshape(b, t, -1)
            del windows[AUDIO_TOKENS]
        return windows

    def split(self, fraction: float, seed: int = SAMPLE_SEED) -> tuple[CalibrationSet, ...]:
        """(calibration, held out): a random ``fraction`` of faces and of windows held out."""
        rng = np.random.default_rng(seed)

        def parts(n: int) -> tuple[np.ndarray, np.ndarray]:
            order = rng.permutation(n)
            k = max(1, int(round(n * fraction)))
            return order[k:], order[:k]

        fa, fb = parts(self.num_faces)
        wa, wb = parts(self.num_windows)
        return tuple(
            CalibrationSet(
                self.faces[f], {k: v[w] for k, v in self.windows.items()}, self.source, self.info
            )
            for f, w in ((fa, wa), (fb, wb))
        )


def from_arrays(
    faces: np.ndarray,
    visual: np.ndarray,
    audio_tokens: np.ndarray | None = None,
    audio_present: np.ndarray | None = None,
    visual_present: np.ndarray | None = None,
) -> CalibrationSet:
    """A calibration set from arrays: faces [N, 3, S, S] in [0, 1], visual [B, T, D], audio
    tokens [B, T, F] (audio models), presence flags [B] (default: all present)."""
    b = len(visual)
    windows = {
        VISUAL: visual,
        VISUAL_PRESENT: np.ones(b, np.float32) if visual_present is None else visual_present,
    }
    if audio_tokens is not None:
        windows[AUDIO_TOKENS] = audio_tokens
        windows[AUDIO_PRESENT] = np.ones(b, np.float32) if audio_present is None else audio_present
    return CalibrationSet(np.asarray(faces), windows)


# ------------------------------------------------------------------------------- the reader
class ArrayDataReader(CalibrationDataReader):
    """ONNX Runtime ``CalibrationDataReader`` over arrays keyed by input name: yields
    ``{name: rows[i:i + batch]}`` until exhausted; ``rewind()`` starts again."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch: int = READER_BATCH) -> None:
        self.arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
        self.rows = len(next(iter(self.arrays.values())))
        self.batch = max(1, batch)
        self._start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._start >= self.rows:
            return None
        stop = self._start + self.batch
        out = {k: v[self._start : stop] for k, v in self.arrays.items()}
        self._start = stop
        return out

    def rewind(self) -> None:
        self._start = 0

    def __len__(self) -> int:
        return -(-self.rows // self.batch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


# ------------------------------------------------------------------------------- from media
class _Reservoir:
    """A uniform random sample of at most ``size`` rows from a stream (Algorithm R)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng, self.items, self.seen = size, rng, [], 0

    def offer(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
        else:
            j = int(self.rng.integers(self.seen))
            if j < self.size:
                self.items[j] = item


class RecordingBackend:
    """Wraps an inference backend and samples what the pipeline feeds it: the crops given to
    ``encode_frames`` and the windows given to ``head`` (either the positional
    ``head(visual, audio_features, audio_present, visual_present)`` or a dict keyed by ONNX
    name). A window is stored with its raw audio tokens, those of the ``encode_audio`` call
    just before its ``head``: drive it with an engine that encodes every window's T tokens
    (``StreamingEngine(cache_audio=False)``, as :func:`from_media` does). Everything else is
    delegated to the wrapped backend."""

    def __init__(
        self, inner: Any, token_dim: int | None, max_faces: int, max_windows: int, seed: int
    ) -> None:
        rng = np.random.default_rng(seed)
        self.inner = inner
        self.token_dim = token_dim
        self.faces = _Reservoir(max_faces, rng)
        self.windows = _Reservoir(max_windows, rng)
        self._tokens: np.ndarray | None = None  # [N, F] of the last encode_audio call

    def encode_audio(self, tokens: np.ndarray) -> np.ndarray:
        self._tokens = np.array(tokens, np.float32)
        return self.inner.encode_audio(tokens)

    def _window_tokens(self, features: np.ndarray) -> np.ndarray:
        """The raw tokens [B, T, F] of the audio features [B, T, A] given to ``head``."""
        b, t = features.shape[:2]
        if self._tokens is None or len(self._tokens) != b * t:
            raise CalibrationError(
                "A window's audio features did not come from the encode_audio call just before "
                "its head, so its tokens are unknown; calibrate through from_media."
            )
        return self._tokens.reshape(b, t, -1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_frames(self, faces: np.ndarray) -> np.ndarray:
        for row in np.asarray(faces, np.float32):
            self.faces.offer(row.copy())
        return self.inner.encode_frames(faces)

    def head(self, *args: Any, **kwargs: Any) -> np.ndarray:
        if len(args) == 1 and isinstance(args[0], Mapping):
            inputs = dict(args[0])
        else:
            inputs = dict(zip(HEAD_INPUTS, args))
            inputs.update(kwargs)
        visual = np.asarray(inputs[VISUAL], np.float32)
        window = {
            VISUAL: visual,
            VISUAL_PRESENT: np.asarray(inputs[VISUAL_PRESENT], np.float32).reshape(-1),
        }
        if self.token_dim is not None:
            features = inputs.get(AUDIO_FEATURES)
            present = inputs.get(AUDIO_PRESENT)
            if features is None:  # "no audio": zero tokens, flagged absent (the gate zeroes it)
                tokens = np.zeros((*visual.shape[:2], self.token_dim), np.float32)
                present = np.zeros(len(visual), np.float32)
            else:
                tokens = self._window_tokens(np.asarray(features))
            window[AUDIO_TOKENS] = tokens
            window[AUDIO_PRESENT] = np.asarray(present, np.float32).reshape(-1)
        for i in range(len(visual)):
            self.windows.offer({k: v[i].copy() for k, v in window.items()})
        return self.inner.head(*args, **kwargs)

    def calibration_set(self, source: str) -> CalibrationSet:
        if not self.faces.items or not self.windows.items:
            raise CalibrationError(
                f"No face was found in {source}; calibrate on videos that show a face."
            )
        windows = {k: np.stack([w[k] for w in self.windows.items]) for k in self.windows.items[0]}
        info = {"faces_seen": self.faces.seen, "windows_seen": self.windows.seen}
        return CalibrationSet(np.stack(self.faces.items), windows, source, info)


def is_session(folder: Path) -> bool:
    """A recorded session folder (what ``eri record`` writes: ``video.mp4`` inside)."""
    return folder.is_dir() and (folder / SESSION_VIDEO).is_file()


def media_files(folder: str | Path) -> list[Path]:
    """The media files and recorded session folders directly in ``folder`` (``folder`` itself
    when it is a file or a session)."""
    folder = Path(folder)
    if folder.is_file() or is_session(folder):
        return [folder]
    if not folder.is_dir():
        raise CalibrationError(
            f"Calibration data {folder} does not exist; give a folder of videos with faces."
        )
    files = sorted(
        p
        for p in folder.iterdir()
        if (p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES) or is_session(p)
    )
    if not files:
        raise CalibrationError(
            f"{folder} holds no media files ({', '.join(sorted(MEDIA_SUFFIXES))}) or recorded "
            "sessions; give a folder of videos with faces."
        )
    return files


def check_shapes(data: CalibrationSet, model: Any) -> None:
    """Refuse calibration arrays whose shapes are not the inputs ``model``'s graphs take:
    faces [N, 3, S, S], visual [B, T, D], audio_tokens [B, T, F] (audio models), flags [B]."""
    t, s, d = model.window.num_samples, model.crop.size, model.feature_dim
    want = {FACES: (3, s, s), VISUAL: (t, d), VISUAL_PRESENT: ()}
    if model.has_audio:
        want[AUDIO_TOKENS] = (t, model.audio_spec.token_dim)
        want[AUDIO_PRESENT] = ()
    arrays = {FACES: data.faces, **data.windows}
    for name, shape in want.items():
        got = arrays.get(name)
        if got is None or tuple(got.shape[1:]) != shape:
            seen = "missing" if got is None else f"of shape {list(got.shape)}"
            raise CalibrationError(
                f"Calibration data from {data.source} has {name} {seen}, but this "
                f"{model.arch_name} model takes {['N', *shape]}; run `eri calibrate` again "
                "for this model."
            )


def from_media(
    bundle: Any,
    folder: str | Path,
    *,
    max_faces: int = DEFAULT_FACES,
    max_windows: int = DEFAULT_WINDOWS,
    seed: int = SAMPLE_SEED,
    backend: Any = None,
) -> CalibrationSet:
    """Run every media file in ``folder`` through the real pipeline (face tracker, crop, audio
    front end, streaming windows) with ``bundle``'s fp32 model, and sample up to ``max_faces``
    crops and ``max_windows`` windows uniformly over all of them.

    ``backend`` defaults to the fp32 torch backend on the CPU (the reference int8 approximates).
    """
    from eri.realtime.analyze import make_tracker
    from eri.realtime.pipeline import StreamingEngine, run_offline
    from eri.realtime.sources import open_source

    files = media_files(folder)
    if backend is None:
        from eri.realtime.backends import TorchBackend

        backend = TorchBackend(bundle, device="cpu")
    model = bundle.model
    token_dim = model.audio_spec.token_dim if model.has_audio else None
    recorder = RecordingBackend(backend, token_dim, max_faces, max_windows, seed)
    for path in files:
        log.info("calibration: running %s through the pipeline", path.name)
        source = open_source(str(path), realtime=False)
        tracker = make_tracker(bundle)
        try:
            # Every window's T tokens encoded right before its head, so the recorder pairs them.
            engine = StreamingEngine(bundle, recorder, tracker, fps=source.fps, cache_audio=False)
            with source:
                for _ in run_offline(source, engine):
                    pass
        finally:
            close = getattr(tracker, "close", None)
            if close:
                close()
    result = recorder.calibration_set(str(folder))
    result.info["files"] = [p.name for p in files]
    log.info(
        "calibration: %d crops and %d windows sampled from %d file(s) (%d crops, %d windows seen)",
        result.num_faces,
        result.num_windows,
        len(files),
        result.info["faces_seen"],
        result.info["windows_seen"],
    )
    return result
