"""One error type: every error a user can cause is an EriError with one sentence."""

from __future__ import annotations

import pytest

from eri.errors import INSTALL_HINTS, EriError, MissingDependencyError, missing_dependency


def test_user_error_classes_derive_from_eri_error():
    from eri.models.audio import AudioDecodeError
    from eri.models.bundle import BundleError
    from eri.models.registry import UnknownArchitectureError
    from eri.models.weights import WeightsError
    from eri.realtime.backends import BackendError
    from eri.realtime.cli import UserError
    from eri.realtime.outputs import OutputWriteError
    from eri.realtime.pipeline import PipelineError
    from eri.realtime.sources import MicrophoneUnavailable, SourceError

    for cls in (
        AudioDecodeError,
        BundleError,
        UnknownArchitectureError,
        WeightsError,
        BackendError,
        UserError,
        OutputWriteError,
        PipelineError,
        SourceError,
        MicrophoneUnavailable,
        MissingDependencyError,
    ):
        assert issubclass(cls, EriError), cls


@pytest.mark.parametrize("module", sorted(INSTALL_HINTS))
def test_missing_dependency_is_one_sentence_with_the_install_command(module):
    err = missing_dependency(module)
    text = str(err)
    assert isinstance(err, EriError) and isinstance(err, ImportError)
    assert f"`{INSTALL_HINTS[module][1]}`" in text
    assert text.endswith(".") and text.count(". ") == 0


def test_unknown_architecture_lists_the_valid_ones():
    import eri.models

    with pytest.raises(EriError) as info:
        eri.models.create_model("resnet9000")
    for name in eri.models.list_models():
        assert name in str(info.value)


def test_cli_turns_an_eri_error_into_one_line_and_exit_1(tmp_path, caplog):
    from eri.realtime.cli import main

    assert main(["analyze", str(tmp_path / "missing.mp4"), "--no-progress"]) == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "missing.mp4" in errors[0].getMessage()
    assert "Traceback" not in caplog.text
