"""Capture, face tracking, streaming inference, analysis, benchmark and the `eri` command."""
