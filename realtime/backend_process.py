"""A backend run in a child process, for live inference with eager torch on the CPU.

Eager torch releases and re-takes the GIL around every op (hundreds per frame), so in the viewer
each op of the inference thread can wait for the GUI thread's Python (pyqtgraph redraws) and,
beside other CPU-bound work, for a GIL holder the kernel has descheduled. ONNX Runtime and
TensorRT run a whole graph in one call without the GIL and do not suffer this. Moving the torch
model into its own process gives it its own GIL: each call is one round trip of numpy arrays
over a pipe (a [1, 3, 112, 112] crop is 150 kB, well under a millisecond), measured in
docs/benchmarks.md ("Under contention").

:func:`live_backend` is what the live commands (``eri view``, ``eri record``) call: torch on the
CPU goes to a child process, every other backend stays in this one.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import signal
import subprocess
import sys
import threading
import weakref
from multiprocessing.connection import Client, Listener
from typing import Any

import numpy as np

from eri.realtime.backends import Backend, BackendError, create_backend

log = logging.getLogger(__name__)

#: Longest wait for the child to import torch, load the model and answer.
START_TIMEOUT_S = 180.0
#: Longest wait for the child to exit after being asked to.
STOP_TIMEOUT_S = 5.0
#: The child reads the connection's key from this variable (never from its command line).
AUTHKEY_ENV = "ERI_BACKEND_AUTHKEY"


def _serve(conn: Any) -> None:
    """The child: receive the bundle and options, build the backend, describe it, then answer
    ``(method, args)`` calls until None or EOF."""
    try:
        bundle, name, precision, threads = pickle.loads(conn.recv_bytes())
        backend = create_backend(bundle, name, precision, threads=threads)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        conn.send(("error", _picklable(exc)))
        return
    conn.send(
        (
            "ok",
            {
                "name": backend.name,
                "precision": backend.precision,
                "device": backend.device,
                "reason": backend.reason,
                "description": backend.describe(),
            },
        )
    )
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent went away
            return
        if request is None:
            return
        method, args = request
        try:
            conn.send(("ok", getattr(backend, method)(*args)))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", _picklable(exc)))


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling, else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _shutdown(conn: Any, proc: subprocess.Popen) -> None:
    try:
        if conn is not None:
            conn.send(None)
    except (OSError, ValueError):
        pass
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT_S)
    if conn is not None:
        conn.close()


def _accept(listener: Listener, proc: subprocess.Popen, timeout_s: float) -> Any:
    """The child's connection, or None if it exited or did not connect in time."""
    box: list[Any] = []

    def accept() -> None:
        try:
            box.append(listener.accept())
        except (OSError, EOFError):  # the listener closed: the child never connected
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    waited = 0.0
    while thread.is_alive() and waited < timeout_s and proc.poll() is None:
        thread.join(0.1)
        waited += 0.1
    return box[0] if box else None


class ProcessBackend(Backend):
    """Another backend (``name``: ``torch`` by default) in a child process; same interface.

    The child gets a pickled copy of the bundle, so it needs no path (untrained bundles work
    too). Errors raised in the child are raised here with their own message; a child that dies
    raises :class:`~eri.realtime.backends.BackendError`. :meth:`close` (also run when this
    object is collected and at exit) stops the child.
    """

    def __init__(
        self, bundle: Any, name: str = "torch", precision: str = "fp32", threads: int = 0
    ) -> None:
        super().__init__(bundle)
        # A fresh interpreter running this module (not multiprocessing's spawn, which would
        # re-import the caller's main script), connected back over an authenticated pipe.
        authkey = secrets.token_bytes(32)
        with Listener(authkey=authkey) as listener:
            env = dict(os.environ, **{AUTHKEY_ENV: authkey.hex()})
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(listener.address)], env=env
            )
            self._conn = _accept(listener, self._proc, START_TIMEOUT_S)
        self._finalizer = weakref.finalize(self, _shutdown, self._conn, self._proc)
        if self._conn is None:
            self.close()
            raise BackendError(
                f"The inference process (exit code {self._proc.returncode}) did not connect "
                f"within {START_TIMEOUT_S:.0f} s; run with --backend onnxruntime, or check the "
                "log for its error."
            )
        # Plain pickle: multiprocessing's would share torch tensors through a resource server
        # that only its own children can authenticate with.
        self._conn.send_bytes(pickle.dumps((bundle, name, precision, threads)))
        try:
            info = self._receive(START_TIMEOUT_S, "starting")
        except BaseException:
            self.close()
            raise
        self.name, self.precision, self.device = info["name"], info["precision"], info["device"]
        self.reason = info["reason"]
        self._description = info["description"]
        log.info("%s runs in process %d", self._description, self._proc.pid)

    def _receive(self, timeout_s: float | None, doing: str) -> Any:
        try:
            if timeout_s is not None and not self._conn.poll(timeout_s):
                raise BackendError(
                    f"The inference process did not answer within {timeout_s:.0f} s while "
                    f"{doing}; run with --backend onnxruntime, or check the log for its error."
                )
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise BackendError(
                f"The inference process exited (code {self._proc.poll()}) while {doing}; "
                "run with --backend onnxruntime, or check the log for its error."
            ) from None
        if status == "error":
            raise value
        return value

    def _call(self, method: str, *args: Any) -> Any:
        if not self._finalizer.alive:
            raise BackendError("This inference process was closed; create the backend again.")
        try:
            self._conn.send((method, args))
        except (OSError, ValueError):
            raise BackendError(
                f"The inference process exited (code {self._proc.poll()}); run with "
                "--backend onnxruntime, or check the log for its error."
            ) from None
        return self._receive(None, f"running {method}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def encode_frames(self, faces: np.ndarray) -> np.ndarray:
        return self._call("encode_frames", faces)

    def encode_audio(self, tokens: np.ndarray) -> np.ndarray:
        return self._call("encode_audio", tokens)

    def head(self, visual, audio_features, audio_present, visual_present) -> np.ndarray:
        return self._call("head", visual, audio_features, audio_present, visual_present)

    def describe(self) -> str:
        return f"{self._description}, own process"

    def close(self) -> None:
        """Stop the child (idempotent)."""
        self._finalizer()


def live_backend(bundle: Any, name: str, precision: str, threads: int) -> Backend:
    """The backend for live use (viewer, recorder): :func:`create_backend`'s, except that eager
    torch on the CPU (``torch`` named on a machine without CUDA; ``auto`` never picks it there)
    runs in a child process (:class:`ProcessBackend`)."""
    if name == "torch":
        import torch

        if not torch.cuda.is_available():
            return ProcessBackend(bundle, "torch", precision, threads)
    return create_backend(bundle, name, precision, threads=threads)


def _main(address: str) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent decides when this child
    # stops (it closes the pipe or sends None), so a recording can still finish cleanly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    conn = Client(address, authkey=bytes.fromhex(os.environ.pop(AUTHKEY_ENV)))
    try:
        _serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    _main(sys.argv[1])
