"""One line for any failure the CLI reports, including torch's ``CheckpointException``.

``CheckpointException`` derives from ``BaseException`` (not ``Exception``) and its text is every rank's
whole traceback; a user needs the file and the cause. Imports nothing heavy.
"""

from __future__ import annotations

import errno
import os
import shutil


def is_checkpoint_exception(exc: BaseException) -> bool:
    """torch.distributed.checkpoint's exception, recognised without importing torch."""
    return type(exc).__name__ == "CheckpointException" and isinstance(getattr(exc, "failures", None), dict)


def _cause(exc: BaseException) -> str:
    """The innermost useful text of one rank's failure."""
    while exc.__cause__ is not None and not isinstance(exc, OSError):
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = exc.filename or "the output folder"
        return f"no space left on device while writing {where}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}".strip()


def describe(exc: BaseException, folder: str | os.PathLike | None = None) -> str:
    """``exc`` in one line; for a checkpoint failure the first failing rank's cause, with the folder."""
    if not is_checkpoint_exception(exc):
        return " ".join(str(exc).split()) or type(exc).__name__
    ranks = sorted(exc.failures)
    first = exc.failures[ranks[0]]
    inner = first[0] if isinstance(first, tuple) else first
    text = _cause(inner) if isinstance(inner, BaseException) else str(inner)
    if folder is not None and "unexpected pos" in text:  # torch's zip writer lost the OSError: look
        free = shutil.disk_usage(folder).free
        if free < 2**20:
            text = f"no space left on device for {folder} ({free} bytes free)"
    where = f"{folder}: " if folder is not None else ""
    more = f" (and {len(ranks) - 1} more rank(s))" if len(ranks) > 1 else ""
    return f"{where}checkpoint {exc.args[0] if exc.args else 'operation'} failed on rank {ranks[0]}{more}: " + \
        " ".join(text.split())
