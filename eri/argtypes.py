"""Argument types shared by the ``eri`` subcommands (torch-free: ``eri --help`` imports them).

Each returns a parser for ``argparse``'s ``type=``; a bad value is argparse's exit 2 with the
sentence given here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """A whole number >= ``minimum`` (``why`` is appended to the refusal)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; use at least {minimum}{why}")
        return value

    return parse


def positive_float(text: str) -> float:
    """A number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value
