"""A clip's window: built from its media (:func:`extract_clip`), stored (one ``.npz`` per clip
under ``<cache_dir>/clips/``), read back (:class:`ClipCache`, :class:`CachedClip`) and served
to torch (:class:`WindowDataset`, what the trainer and the evaluator consume).

The window is the clip's whole span, from its first event to its last frame (the live output
step at the last frame), sampled by ``WindowSpec.clip_sample_times``. The video is decoded once
with the live :class:`~eri.realtime.sources.files.FileSource` and every frame goes through the
live tracker in order (it smooths and bridges gaps frame to frame, so no frame can be skipped
without changing the crops); each sample takes the crop of the nearest frame that has a face
(the live window's rule, ties to the earlier frame); the sample times need the clip's
duration, so the crops wait until its end in a :class:`~eri.training.crop_store.CropStore`
(bounded memory, then an unnamed temporary file beside the cache). The audio (a separate
file, or the video's own track decoded in the same pass, with the live source's times) goes
through the one resampler and :mod:`eri.models.audio`: tokens and the silence rule exactly as
live.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from eri.errors import EriError
from eri.models.audio import (
    AudioSpec,
    audio_present_in,
    feature_frames,
    frame_end_times,
    frame_level_db,
    load_audio,
    tokens_at,
    window_audio_span,
)
from eri.models.crop import to_tensor_layout
from eri.models.spec import NUM_EMOTIONS, WindowSpec, nearest_indices
from eri.training.crop_store import SPILL_BYTES, CropStore
from eri.training.data.clips import Clip, DatasetError

if TYPE_CHECKING:
    from eri.training.preprocess import PreprocessConfig

__all__ = [
    "CachedClip",
    "ClipCache",
    "MediaError",
    "WindowDataset",
    "clip_file_name",
    "extract_clip",
]

CLIPS_DIR = "clips"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def clip_file_name(clip_id: str) -> str:
    """The cache file name of a clip: the id itself when it is a safe file name, else a
    sanitised id plus a short hash (ids such as ``a/b`` from a manifest)."""
    if _SAFE.fullmatch(clip_id) and len(clip_id) <= 120:
        return f"{clip_id}.npz"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", clip_id).strip("._")[:80] or "clip"
    return f"{slug}-{hashlib.sha1(clip_id.encode()).hexdigest()[:10]}.npz"


@dataclass
class CachedClip:
    """One clip's preprocessed window (T = WindowSpec.num_samples, S = crop side, F = tokens).

    ``faces`` uint8 [T, S, S, 3] RGB: per sample time, the crop of the nearest frame that has a
    face (the live window's rule); all zeros when the clip has no face at all.
    ``face_found`` bool [T]: the frame nearest the sample time had a face.
    ``audio_tokens`` float32 [T, F] raw stacked MFCC tokens (zeros without audio; None when
    the config has no audio). ``audio_present``: the shared silence rule over the window.
    ``visual_present``: ``face_found.any()``. ``sample_times`` float64 [T] seconds.
    """

    faces: np.ndarray
    face_found: np.ndarray
    audio_tokens: np.ndarray | None
    audio_present: bool
    visual_present: bool
    duration_s: float
    sample_times: np.ndarray
    meta: dict[str, Any]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save (meta as a JSON string)."""
        out = {
            "faces": self.faces,
            "face_found": self.face_found,
            "audio_present": np.array(self.audio_present),
            "visual_present": np.array(self.visual_present),
            "duration_s": np.array(self.duration_s, np.float64),
            "sample_times": self.sample_times,
            "meta": np.array(json.dumps(self.meta, sort_keys=True)),
        }
        if self.audio_tokens is not None:
            out["audio_tokens"] = self.audio_tokens
        return out

    @classmethod
    def from_npz(cls, data: Any) -> CachedClip:
        return cls(
            faces=data["faces"],
            face_found=data["face_found"].astype(bool),
            audio_tokens=data["audio_tokens"] if "audio_tokens" in data.files else None,
            audio_present=bool(data["audio_present"]),
            visual_present=bool(data["visual_present"]),
            duration_s=float(data["duration_s"]),
            sample_times=data["sample_times"],
            meta=json.loads(str(data["meta"])),
        )


class ClipCache:
    """The preprocessed clips of one dataset under one config (``cache_dir``)."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.clips_dir = self.cache_dir / CLIPS_DIR

    def path(self, clip_id: str) -> Path:
        return self.clips_dir / clip_file_name(clip_id)

    def has(self, clip_id: str) -> bool:
        return self.path(clip_id).is_file()

    def cached(self, clips: list[Clip]) -> list[Clip]:
        """The clips of ``clips`` that the cache holds, in their order."""
        return [c for c in clips if self.has(c.clip_id)]

    def load(self, clip_id: str) -> CachedClip:
        """The cached window of ``clip_id``; DatasetError when absent or unreadable."""
        path = self.path(clip_id)
        if not path.is_file():
            raise DatasetError(
                f"Clip {clip_id!r} is not in the preprocessing cache {self.cache_dir}; run the "
                "preprocessing first (its media may have been unreadable: see report.json)."
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                return CachedClip.from_npz(data)
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(
                f"Cache file {path} is unreadable ({exc}); delete it and preprocess again."
            ) from None

    def config(self) -> dict[str, Any] | None:
        """The config.json of the cache (None before the first run)."""
        path = self.cache_dir / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None


class WindowDataset(torch.utils.data.Dataset):
    """Cached windows of ``clips`` as torch items (the default collate works).

    Item: ``faces`` float32 [T, 3, S, S] in [0, 1] (what live inference gives
    ``encode_frames``), ``audio_tokens`` float32 [T, F] (absent when the config has no audio),
    ``visual_present``/``audio_present``/``labelled`` float32 [], ``labels`` float32 [7]
    (zeros when unlabelled), ``index`` int64 [] (position in ``clips``).
    ``require_labels``: refuse unlabelled clips. ``memory``: keep loaded clips in memory.
    """

    def __init__(
        self,
        cache: ClipCache,
        clips: list[Clip],
        *,
        require_labels: bool = True,
        memory: bool = False,
    ) -> None:
        missing = [c.clip_id for c in clips if not cache.has(c.clip_id)]
        if missing:
            raise DatasetError(
                f"{len(missing)} clip(s) are not in the cache {cache.cache_dir} (e.g. "
                f"{missing[0]!r}); pass cache.cached(clips) or preprocess them first."
            )
        if require_labels:
            unlabelled = [c for c in clips if c.labels is None]
            if unlabelled:
                raise DatasetError(
                    f"Clip {unlabelled[0].clip_id!r} ({unlabelled[0].origin}) has no labels; "
                    "train and score on labelled splits, or pass require_labels=False."
                )
        self.cache = cache
        self.clips = list(clips)
        self.memory = memory
        self._kept: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i in self._kept:
            return self._kept[i]
        clip = self.clips[i]
        cached = self.cache.load(clip.clip_id)
        labels = clip.labels
        item = {
            "faces": torch.from_numpy(to_tensor_layout(cached.faces)),
            "visual_present": torch.tensor(float(cached.visual_present)),
            "audio_present": torch.tensor(float(cached.audio_present)),
            "labels": torch.from_numpy(
                np.zeros(NUM_EMOTIONS, np.float32) if labels is None else labels.copy()
            ),
            "labelled": torch.tensor(float(labels is not None)),
            "index": torch.tensor(i, dtype=torch.int64),
        }
        if cached.audio_tokens is not None:
            item["audio_tokens"] = torch.from_numpy(cached.audio_tokens.astype(np.float32))
        if self.memory:
            self._kept[i] = item
        return item


# ----------------------------------------------------------------------------- building
def media_signature(clip: Clip) -> dict[str, Any]:
    """Size and modification time of the clip's media: a changed file is preprocessed again."""
    sig: dict[str, Any] = {}
    for kind in ("video", "audio"):
        p = getattr(clip, kind)
        if p is not None:
            st = Path(p).stat()
            sig[kind] = [str(p), st.st_size, st.st_mtime_ns]
    return sig


class MediaError(EriError, ValueError):
    """A clip's media cannot give a window (no frames, no samples)."""


@dataclass
class _Decoded:
    times: np.ndarray  # [N] float64 frame times (s)
    has_face: np.ndarray  # [N] bool: the tracker gave a crop (held in order in the store)
    decode_errors: int = 0
    wave: np.ndarray | None = None  # [S] float32 mono audio at the spec's rate
    audio_start: float = 0.0  # time of the first audio sample (s)


def _decode_video(path: Path, tracker: Any, own_audio: bool, store: CropStore) -> _Decoded:
    """Decode the video once, tracking every frame in order (crops into ``store``); with
    ``own_audio`` also its audio track, as the live FileSource delivers it (same resampler,
    times and gap filling)."""
    from eri.realtime.sources.events import AudioChunk
    from eri.realtime.sources.files import FileSource

    tracker.reset()
    times, has_face, chunks = array("d"), bytearray(), []
    source = FileSource(path, audio=own_audio)
    for event in source:
        if isinstance(event, AudioChunk):
            chunks.append(event)
            continue
        result = tracker.process(event.image, event.time_s)
        times.append(event.time_s)
        has_face.append(result.crop is not None)
        if result.crop is not None:
            store.append(result.crop)
    out = _Decoded(
        np.array(times, np.float64),
        np.array(has_face, bool),
        int(source.stats()["decode_errors"]),
    )
    samples = [c.samples for c in chunks]
    if samples and sum(map(len, samples)):
        out.wave = np.concatenate(samples).astype(np.float32, copy=False)
        out.audio_start = float(chunks[0].time_s)
    return out


def _decode(clip: Clip, spec: AudioSpec | None, tracker: Any, store: CropStore) -> _Decoded:
    """Frames (tracked, crops into ``store``) and audio of a clip; raises for unreadable media."""
    from eri.realtime.sources.events import AUDIO_RATE

    own = (
        spec is not None
        and clip.video is not None
        and clip.audio == clip.video
        and spec.sample_rate == AUDIO_RATE
    )
    if clip.video is not None:
        out = _decode_video(clip.video, tracker, own, store)
        if out.times.size == 0:
            raise MediaError(f"{clip.video} has no decodable video frames.")
    else:
        out = _Decoded(np.zeros(0), np.zeros(0, bool))
    if spec is not None and clip.audio is not None and not own:
        out.wave = load_audio(clip.audio, spec.sample_rate)  # a separate file starts at 0
    return out


def extract_clip(
    clip: Clip,
    config: PreprocessConfig,
    tracker: Any,
    *,
    spill_dir: Path | None = None,
    spill_bytes: int | None = SPILL_BYTES,
) -> CachedClip:
    """The cached window of one clip (raises on unreadable media); ``tracker``: a live
    :class:`~eri.realtime.face.FaceTracker` for ``config.crop`` (reset here), or None for a
    clip without video. The window's sample times are known only at the clip's end, so the
    crops wait in memory up to ``spill_bytes`` (None: no limit), beyond that in an unnamed
    temporary file in ``spill_dir`` (None: the system's temporary folder), removed on return."""
    with CropStore(spill_bytes, spill_dir) as store:
        return _window(clip, config, _decode(clip, config.audio, tracker, store), store)


def _window(
    clip: Clip, config: PreprocessConfig, decoded: _Decoded, store: CropStore
) -> CachedClip:
    """The window of a decoded clip: T crops read back from ``store``, tokens, flags."""
    spec = config.audio
    times, has_face, wave = decoded.times, decoded.has_face, decoded.wave
    # The live clock: from the first event (frame or audio sample) to the last frame.
    if times.size:
        start = float(times[0]) if wave is None else min(float(times[0]), decoded.audio_start)
        end = float(times[-1])
    else:
        if wave is None or spec is None:
            raise MediaError(f"{clip.origin}: the clip has neither video nor audio.")
        start = decoded.audio_start
        end = start + wave.shape[0] / spec.sample_rate
    duration = end - start
    sample_times = start + config.window.clip_sample_times(duration)
    s = config.crop.size
    n = config.window.num_samples
    faces = np.zeros((n, s, s, 3), np.uint8)
    face_found = np.zeros(n, bool)
    with_face = np.flatnonzero(has_face)
    if with_face.size:
        faces = store.take(nearest_indices(times[with_face], sample_times))
        face_found = has_face[nearest_indices(times, sample_times)]
    tokens, audio_present = None, False
    if spec is not None:
        tokens = np.zeros((n, spec.token_dim), np.float32)
        if wave is not None:
            frames = feature_frames(wave, spec)
            ends = frame_end_times(frames.shape[0], spec, decoded.audio_start)
            tokens, _ = tokens_at(frames, ends, sample_times, spec)
            whole = WindowSpec(n, max(config.window.context_s, duration, 1e-9))
            span = window_audio_span(end, start, whole, spec)
            audio_present = audio_present_in(frame_level_db(frames, spec), ends, span)
    meta = {
        "clip_id": clip.clip_id,
        "source": media_signature(clip),
        "frames": int(times.size),
        "face_frames": int(with_face.size),
        "decode_errors": decoded.decode_errors,
        "audio_s": 0.0 if wave is None or spec is None else wave.shape[0] / spec.sample_rate,
        "start_s": start,
    }
    return CachedClip(
        faces=faces,
        face_found=face_found,
        audio_tokens=tokens,
        audio_present=bool(audio_present),
        visual_present=bool(face_found.any()),
        duration_s=float(duration),
        sample_times=sample_times,
        meta=meta,
    )


def write_npz(path: Path, cached: CachedClip) -> None:
    """Atomic: a temporary file beside ``path`` (pid in its name), then os.replace."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            np.savez_compressed(f, **cached.arrays())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
