"""Media files and recorded sessions, decoded with PyAV: :class:`FileSource` and
:class:`SessionSource`."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from eri.models.audio import Resampler
from eri.realtime.sources.events import (
    AUDIO_RATE,
    AudioChunk,
    Event,
    Source,
    SourceError,
    VideoFrame,
    _paced,
    _Reorder,
)

log = logging.getLogger(__name__)

_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4`"


def _check_media_path(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"Media file {path} does not exist: check the path.")
    if path.is_dir():
        raise SourceError(
            f"{path} is a folder, not a media file: pass a video or audio file, or open the "
            "folder as a recorded session."
        )
    if path.stat().st_size == 0:
        raise SourceError(
            f"Media file {path} is empty (0 bytes): it was not written completely; choose "
            "another file or record it again."
        )


def _open_container(path: Path):
    import av

    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise SourceError(
            f"{path} is not a readable media file ({_ffmpeg_reason(exc)}): check that it is a "
            f"complete video or audio file, or {_REENCODE_HINT}."
        ) from exc


def _ffmpeg_reason(exc: BaseException) -> str:
    """A short reason from an FFmpeg / OS error, without the file name repeated."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror or exc).strip().rstrip(".") or type(exc).__name__


def _stream_codec_name(stream) -> str:
    ctx = stream.codec_context
    if ctx is not None:
        return ctx.name
    return getattr(stream, "name", None) or "unknown"


def _is_cover_art(stream) -> bool:
    """True for a still picture attached to an audio file (album art), which is not video."""
    try:
        return bool(int(stream.disposition) & 0x0400)  # AV_DISPOSITION_ATTACHED_PIC
    except (AttributeError, TypeError, ValueError):
        return False


def _rel_time(stream, value: int | None, t0: float) -> float | None:
    if value is None or stream.time_base is None:
        return None
    return float(value * stream.time_base) - t0


class FileSource(Source):
    """A video file with its audio track, or an audio-only file, decoded with PyAV.

    ``realtime=False`` decodes as fast as possible (analysis); ``realtime=True`` releases each
    event at its timestamp (live viewing; ``speed`` < 1 plays slower) and never sleeps to catch
    up with a slow consumer. ``audio=False`` ignores the audio track; ``loop=True`` plays the
    file again and again with times continuing (the clock never goes back). Video frames come
    out as RGB uint8; audio is
    resampled to mono float32 at :data:`AUDIO_RATE` (gaps in the track are filled with silence
    so chunk times and sample counts agree). Frames and chunks are merged into nondecreasing
    time with a small bounded reorder buffer.

    Opening checks the file (exists, not empty, readable, decodable) and raises SourceError. A
    packet that fails to decode is skipped and counted (``decode_errors``); a stream that fails
    midway (a demuxer error, or more than ``max_decode_errors`` bad packets in a row), or an
    MP4/MOV that ends well before its header says (a truncated copy), first delivers every event
    decoded so far, then raises SourceError naming the time.
    """

    def __init__(
        self,
        path: str | Path,
        realtime: bool = False,
        audio: bool = True,
        loop: bool = False,
        *,
        max_decode_errors: int = 25,
        speed: float = 1.0,
    ) -> None:
        super().__init__()
        if not speed > 0:
            raise ValueError(f"FileSource speed must be > 0, got {speed}.")
        self.speed = float(speed)
        self.path = Path(path)
        self.max_decode_errors = max_decode_errors
        self._counters["decode_errors"] = 0
        self.realtime = realtime
        self.loop = loop
        self.name = self.path.name
        _check_media_path(self.path)
        container = _open_container(self.path)
        try:
            self._probe(container, audio)
        finally:
            container.close()

    def _probe(self, container, audio: bool) -> None:
        self._format = container.format.name if container.format is not None else ""
        self._t0 = container.start_time / 1e6 if container.start_time is not None else 0.0
        videos = [v for v in container.streams.video if not _is_cover_art(v)]
        audios = list(container.streams.audio)
        if not videos and not audios:
            raise SourceError(
                f"{self.path} has no video or audio stream: choose a video or audio file."
            )
        self._video_index: int | None = None
        self._audio_index: int | None = None
        self._video_end: float | None = None
        self._audio_end: float | None = None
        self.has_video = bool(videos)
        self.fps = None
        self.width = self.height = None
        self.frame_count = 0
        if videos:
            v = videos[0]
            if v.codec_context is None:
                raise SourceError(
                    f"{self.path} uses the video codec {_stream_codec_name(v)!r}, which this "
                    f"FFmpeg build cannot decode: {_REENCODE_HINT}."
                )
            self._video_index = v.index
            rate = v.average_rate or v.guessed_rate or v.base_rate
            self.fps = float(rate) if rate else None
            self.width = v.codec_context.width or None
            self.height = v.codec_context.height or None
            start = _rel_time(v, v.start_time, self._t0)
            self._video_start = start if start is not None else 0.0
            if v.duration:
                self._video_end = self._video_start + float(v.duration * v.time_base)
        if container.duration is not None:
            self.duration_s: float | None = container.duration / 1e6
        elif self._video_end is not None:
            self.duration_s = self._video_end
        else:
            self.duration_s = None
        if videos:
            if videos[0].frames:
                self.frame_count = int(videos[0].frames)
            elif self.duration_s and self.fps:
                self.frame_count = int(round(self.duration_s * self.fps))
        self.has_audio = False
        if not audios:
            self.audio_note = "the file has no audio track"
        elif not audio:
            self.audio_note = "audio was turned off for this source"
        elif audios[0].codec_context is None:
            self.audio_note = (
                f"the audio track uses the codec {_stream_codec_name(audios[0])!r}, which this "
                "FFmpeg build cannot decode"
            )
            log.warning("%s: %s; continuing without audio.", self.path, self.audio_note)
        else:
            a = audios[0]
            self._audio_index = a.index
            self.has_audio = True
            self.audio_note = None
            start = _rel_time(a, a.start_time, self._t0)
            self._audio_start = start if start is not None else 0.0
            if a.duration:
                self._audio_end = self._audio_start + float(a.duration * a.time_base)

    # ---- decoding ---------------------------------------------------------------------------

    def _events(self) -> Iterator[Event]:
        events = self._all_passes()
        if self.realtime:
            events = _paced(events, self._stop_event, self._counters, self.speed)
        return events

    def _all_passes(self) -> Iterator[Event]:
        offset, index = 0.0, 0
        while True:
            end_s, frames = yield from self._one_pass(offset, index)
            if not self.loop or self.stopped:
                return
            if frames == 0 and end_s <= offset:
                return  # nothing decodable: do not spin
            offset = max(offset + (self.duration_s or 0.0), end_s)
            index += frames

    def _one_pass(self, offset: float, index0: int):
        """Decode the file once; yields events, returns (end time, frames decoded)."""
        import av

        container = _open_container(self.path)
        try:
            streams = []
            vs = as_ = None
            if self._video_index is not None:
                vs = container.streams[self._video_index]
                vs.thread_type = "AUTO"
                streams.append(vs)
            if self._audio_index is not None:
                as_ = container.streams[self._audio_index]
                streams.append(as_)
            watermarks: dict[str, float] = {}
            if vs is not None:
                watermarks["video"] = offset + self._video_start
            if as_ is not None:
                watermarks["audio"] = offset + self._audio_start
            reorder = _Reorder(watermarks)
            audio = _AudioTrack(as_, self._t0, offset) if as_ is not None else None
            audio_end = offset + self._audio_end if self._audio_end is not None else None
            frames = 0
            video_end = offset
            position = offset
            failures = [0]  # consecutive packets that failed to decode
            try:
                for packet in container.demux(streams):
                    if self.stopped:
                        return max(video_end, position), frames
                    if packet.stream is vs:
                        for frame in self._decode(packet, failures, position):
                            event = self._video_event(frame, index0 + frames, offset, frames)
                            frames += 1
                            self._count_frame()
                            position = event.time_s
                            video_end = event.time_s + (1.0 / self.fps if self.fps else 0.0)
                            yield from reorder.push("video", event, event.time_s)
                    elif audio is not None:
                        for frame in self._decode(packet, failures, position):
                            for chunk in audio.feed(frame):
                                self._count_chunk(chunk)
                                position = chunk.time_s
                                yield from reorder.push("audio", chunk, chunk.end_s)
                        if audio_end is not None and audio.input_end >= audio_end - 0.05:
                            # The track is complete (often well before the video ends): flush it
                            # now so the frames after it need not wait in the reorder buffer.
                            for chunk in audio.flush():
                                self._count_chunk(chunk)
                                yield from reorder.push("audio", chunk, chunk.end_s)
                            yield from reorder.finish("audio")
                if audio is not None:
                    for chunk in audio.flush():
                        self._count_chunk(chunk)
                        yield from reorder.push("audio", chunk, chunk.end_s)
            except av.FFmpegError as exc:
                yield from reorder.flush()
                self._note_reorder(reorder, audio)
                raise SourceError(
                    f"{self.path} failed to decode at {position:.2f} s "
                    f"({_ffmpeg_reason(exc)}): the file is damaged after that point; the "
                    f"{frames} frames before it were delivered."
                ) from exc
            yield from reorder.flush()
            self._note_reorder(reorder, audio)
            self._check_complete(offset, frames, video_end, audio)
            return max(video_end, audio.end_s if audio is not None else offset), frames
        finally:
            container.close()

    def _decode(self, packet, failures: list[int], position: float) -> list:
        """Decode one packet; a bad packet is skipped and counted, a run of them re-raises."""
        import av

        try:
            frames = packet.decode()
        except av.FFmpegError as exc:
            failures[0] += 1
            self._counters["decode_errors"] += 1
            if failures[0] > self.max_decode_errors:
                raise
            if self._counters["decode_errors"] <= 3:
                log.warning(
                    "%s: skipped a packet that failed to decode near %.2f s (%s).",
                    self.path,
                    position,
                    _ffmpeg_reason(exc),
                )
            return []
        failures[0] = 0
        return frames

    def _video_event(self, frame, index: int, offset: float, n: int) -> VideoFrame:
        image = frame.to_ndarray(format="rgb24")
        if not image.flags.c_contiguous:
            image = np.ascontiguousarray(image)
        if frame.time is not None:
            t = float(frame.time) - self._t0
        else:
            t = self._video_start + (n / self.fps if self.fps else 0.0)
        return VideoFrame(index=index, time_s=offset + t, image=image)

    def _note_reorder(self, reorder: _Reorder, audio: _AudioTrack | None) -> None:
        self._counters["late_events"] = self._counters.get("late_events", 0) + reorder.late
        self._counters["reorder_forced"] = self._counters.get("reorder_forced", 0) + reorder.forced
        if audio is not None:
            gaps = self._counters.get("audio_gap_filled_s", 0.0) + audio.gap_filled_s
            self._counters["audio_gap_filled_s"] = gaps
        if reorder.late:
            log.warning(
                "%s: %d events arrived out of time order and were moved to the time of the "
                "event before them.",
                self.path,
                reorder.late,
            )

    def _check_complete(
        self, offset: float, frames: int, video_end: float, audio: _AudioTrack | None
    ) -> None:
        """Raise if an MP4/MOV stream ended well before its header's duration (truncated)."""
        if self.stopped or not any(k in self._format for k in ("mov", "mp4")):
            return
        checks = []
        if self._video_end is not None and self._video_index is not None:
            checks.append(("video", video_end, offset + self._video_end))
        if audio is not None and self._audio_end is not None and audio.samples_out:
            checks.append(("audio", audio.end_s, offset + self._audio_end))
        for kind, got, expected in checks:
            if got < expected - max(1.0, 0.05 * (expected - offset)):
                raise SourceError(
                    f"{self.path} ends at {got - offset:.2f} s although its header says "
                    f"{expected - offset:.2f} s of {kind}: the file is truncated or damaged "
                    f"after {got - offset:.2f} s; the {frames} frames before it were delivered."
                )


class _AudioTrack:
    """Decoded audio frames of one stream -> mono float32 chunks at AUDIO_RATE with times.

    Chunk times count samples from the first frame's timestamp; a gap in the track's timestamps
    larger than ``gap_s`` is filled with silence so the count stays on the timeline.
    """

    def __init__(self, stream, t0: float, offset: float, gap_s: float = 0.1) -> None:
        self._resampler: Resampler | None = None
        self._stream = stream
        self._t0 = t0
        self._offset = offset
        self._gap_s = gap_s
        self._first: float | None = None  # time of the first input sample
        self._in_time = 0.0  # seconds of input consumed since the first sample
        self.samples_out = 0
        self.gap_filled_s = 0.0

    @property
    def end_s(self) -> float:
        return (self._first if self._first is not None else self._offset) + (
            self.samples_out / AUDIO_RATE
        )

    @property
    def input_end(self) -> float:
        """Time just after the last input sample fed so far."""
        return (self._first if self._first is not None else self._offset) + self._in_time

    def feed(self, frame) -> list[AudioChunk]:
        if self._resampler is None:
            self._resampler = Resampler(AUDIO_RATE)
        chunks: list[AudioChunk] = []
        t = float(frame.time) - self._t0 + self._offset if frame.time is not None else None
        if self._first is None:
            self._first = t if t is not None else self._offset
        elif t is not None:
            gap = t - (self._first + self._in_time)
            if gap > self._gap_s:
                n = int(round(gap * AUDIO_RATE))
                chunks.append(self._chunk(np.zeros(n, dtype=np.float32)))
                self._in_time += gap
                self.gap_filled_s += gap
        rate = frame.sample_rate or AUDIO_RATE
        self._in_time += frame.samples / rate
        chunks.append(self._chunk(self._resampler.frame(frame)))
        return [c for c in chunks if len(c.samples)]

    def flush(self) -> list[AudioChunk]:
        if self._resampler is None:
            return []
        tail, self._resampler = self._resampler.flush(), None
        return [self._chunk(tail)] if len(tail) else []

    def _chunk(self, samples: np.ndarray) -> AudioChunk:
        samples = np.array(samples, dtype=np.float32).reshape(-1)
        assert self._first is not None
        chunk = AudioChunk(self._first + self.samples_out / AUDIO_RATE, samples)
        self.samples_out += len(samples)
        return chunk


class SessionSource(Source):
    """A recorded session folder: video from ``video.mp4``, audio from ``audio.wav``.

    ``audio.wav`` (the raw microphone signal) is preferred; without it (or if it is unreadable)
    the mp4's own audio track is used. Both files' times start at 0, the session start.
    """

    def __init__(self, directory: str | Path, realtime: bool = False) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.realtime = realtime
        self.name = self.directory.name
        if not self.directory.is_dir():
            raise SourceError(
                f"Session folder {self.directory} does not exist: check the path (a session is "
                "the folder `eri record --out` wrote)."
            )
        video = self.directory / "video.mp4"
        wav = self.directory / "audio.wav"
        if not video.is_file():
            raise SourceError(
                f"{self.directory} is not a session folder: video.mp4 is missing (a session "
                "holds video.mp4 and audio.wav; pass a media file directly otherwise)."
            )
        self._audio: FileSource | None = None
        if wav.is_file():
            try:
                self._audio = FileSource(wav)
            except SourceError as exc:
                log.warning("%s; using the audio track of video.mp4 instead.", exc)
        self._video = FileSource(video, audio=self._audio is None)
        self.fps, self.width, self.height = self._video.fps, self._video.width, self._video.height
        self.frame_count = self._video.frame_count
        self.duration_s = self._video.duration_s
        self.has_video = self._video.has_video
        if self._audio is not None:
            self.has_audio, self.audio_note = True, None
        else:
            self.has_audio = self._video.has_audio
            self.audio_note = (
                None
                if self.has_audio
                else "the session has no audio.wav and "
                + (self._video.audio_note or "no audio track")
            )

    def _events(self) -> Iterator[Event]:
        parts = [iter(self._video)]
        if self._audio is not None:
            parts.append(iter(self._audio))
        events: Iterator[Event] = heapq.merge(*parts, key=lambda e: e.time_s)
        events = self._stoppable(events)
        if self.realtime:
            events = _paced(events, self._stop_event, self._counters)
        return events

    def _stoppable(self, events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            if self.stopped:
                return
            yield event

    def stats(self) -> dict[str, float]:
        counters = dict(self._counters)
        for part in (self._video, self._audio):
            if part is not None:
                for key, value in part.stats().items():
                    if key != "max_lag_s":
                        counters[key] = counters.get(key, 0) + value
        return counters
