"""Errors shared by the bridge (name table checks) and the conversion commands."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint is not what the conversion expects; the message names the file / tensor / field."""
