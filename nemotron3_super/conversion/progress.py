"""Progress of long conversions on stderr (tensors and bytes done, rate, ETA), drawn by tqdm.

On a terminal: tqdm's live bar. Otherwise (a log file, CI): tqdm's same line, printed once per 10% so a
log gets ten lines, not thousands of carriage returns. Nothing with ``quiet`` or on torchrun ranks other
than 0 (every rank runs the same loop; one voice is enough).
"""

from __future__ import annotations

import io
import sys
from typing import Any, TextIO

import torch.distributed as dist
from tqdm import tqdm


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class Progress:
    """``update(nbytes)`` after each tensor; ``close()`` (or ``with``) at the end."""

    def __init__(self, desc: str, total_bytes: int, total_tensors: int, *, quiet: bool = False,
                 stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and _rank() == 0
        self.live = self.enabled and self.stream.isatty()
        self.tensors, self.total_tensors, self._decile = 0, total_tensors, 0
        # off a terminal tqdm draws into a scratch buffer; its line is printed at each 10% below
        # smoothing=0: rate and ETA from the average since the start (steadier than tqdm's moving average)
        self.bar = tqdm(total=max(total_bytes, 1), desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        file=self.stream if self.live else io.StringIO(), disable=not self.enabled,
                        smoothing=0, dynamic_ncols=self.live, leave=True)

    def update(self, nbytes: int, tensors: int = 1) -> None:
        if not self.enabled:
            return
        self.tensors += tensors
        self.bar.set_postfix_str(f"{self.tensors:,}/{self.total_tensors:,} tensors", refresh=False)
        self.bar.update(nbytes)
        if not self.live:
            decile = min(10, self.bar.n * 10 // self.bar.total)
            if decile > self._decile:
                self._decile = decile
                print(str(self.bar), file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
