"""Which process of a launch reports: one place for the torchrun rank test that printing code needs.

Read from the launcher's environment (``RANK``), not from ``torch.distributed``, so it answers before a
process group exists and without importing torch (the start-up hook and the CLI's notes run that early).
"""

from __future__ import annotations

import os


def reports_here() -> bool:
    """True in the one process that prints reports and notices: global rank 0 of a torchrun launch, or a
    process that no launcher started (no ``RANK``). A ``RANK`` that is not an integer is left to
    ``torch.distributed`` to refuse; printing then is better than a silent run."""
    rank = os.environ.get("RANK", "0").strip()
    try:
        return int(rank) == 0
    except ValueError:
        return True
