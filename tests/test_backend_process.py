"""The torch backend in a child process (realtime/backend_process.py): same numbers, own
process, errors carried back, clean stop."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from eri.models.bundle import untrained_bundle
from eri.realtime.backend_process import ProcessBackend, live_backend
from eri.realtime.backends import BackendError, create_backend


@pytest.fixture(scope="module")
def bundle():
    return untrained_bundle()


@pytest.fixture(scope="module")
def remote(bundle):
    backend = ProcessBackend(bundle, "torch", "fp32", threads=1)
    yield backend
    backend.close()


def test_same_numbers_as_in_process(bundle, remote):
    local = create_backend(bundle, "torch", "fp32", threads=1)
    rng = np.random.default_rng(0)
    model = bundle.model
    s, t = model.crop.size, model.window.num_samples
    faces = rng.random((3, 3, s, s), dtype=np.float32)
    np.testing.assert_array_equal(remote.encode_frames(faces), local.encode_frames(faces))
    visual = rng.standard_normal((1, t, model.feature_dim), dtype=np.float32)
    args = [visual, None, None, np.ones(1, np.float32)]
    if model.has_audio:
        tokens = (10 * rng.standard_normal((t, model.audio_spec.token_dim))).astype(np.float32)
        audio = remote.encode_audio(tokens)
        np.testing.assert_array_equal(audio, local.encode_audio(tokens))
        args[1:3] = [audio[None], np.ones(1, np.float32)]
    np.testing.assert_array_equal(remote.head(*args), local.head(*args))
    assert remote.pid != os.getpid()
    assert (remote.name, remote.precision, remote.device) == ("torch", "fp32", "cpu")
    assert remote.describe().endswith("own process")


def test_child_errors_come_back_with_their_message(remote):
    with pytest.raises(Exception, match=r"size|shape|channels|expected"):
        remote.encode_frames(np.zeros((1, 5, 7, 7), np.float32))
    # The child keeps serving after an error.
    s = remote.model.crop.size
    assert remote.encode_frames(np.zeros((1, 3, s, s), np.float32)).shape[0] == 1


def test_ctrl_c_in_the_terminal_leaves_the_child_to_the_parent(remote):
    """SIGINT reaches a terminal's whole process group; the child ignores it, so the parent
    can still finish (e.g. the last steps of a recording) and stop it itself."""
    os.kill(remote.pid, signal.SIGINT)
    time.sleep(0.5)
    s = remote.model.crop.size
    assert remote.encode_frames(np.zeros((1, 3, s, s), np.float32)).shape[0] == 1


def test_close_stops_the_child_and_later_calls_say_so(bundle):
    backend = ProcessBackend(bundle, "torch", "fp32", threads=1)
    proc = backend._proc
    backend.close()
    assert proc.poll() == 0  # exited on its own, when asked
    backend.close()  # idempotent
    s = bundle.model.crop.size
    with pytest.raises(BackendError, match="closed"):
        backend.encode_frames(np.zeros((1, 3, s, s), np.float32))


def test_a_child_that_cannot_build_its_backend_raises_here(bundle):
    with pytest.raises(BackendError, match="int8"):
        ProcessBackend(bundle, "torch", "int8", threads=1)


def test_a_child_that_dies_before_connecting_is_one_sentence(bundle, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "executable", "/bin/false")  # exits at once with code 1
    with pytest.raises(BackendError, match=r"exit code 1\) did not connect"):
        ProcessBackend(bundle, "torch", "fp32", threads=1)


def test_live_backend_moves_only_cpu_torch_to_a_process(bundle):
    torch_live = live_backend(bundle, "torch", "fp32", threads=1)
    try:
        assert isinstance(torch_live, ProcessBackend)
    finally:
        torch_live.close()
    ort_live = live_backend(bundle, "onnxruntime", "fp32", threads=1)
    assert not isinstance(ort_live, ProcessBackend) and ort_live.name == "onnxruntime"
