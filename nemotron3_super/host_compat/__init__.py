"""What the host (Megatron-Bridge 0.6.x, megatron-core 0.19) needs to run without Transformer Engine or Apex.

One entry point, :func:`apply_host_fixes`, called from one place: ``nemotron3_super/__init__.py``, so
every process that imports this package (our CLIs, recipes, conversion, and a host that discovers us as a
plugin) has them before it imports the host. It imports nothing heavy: each fix is a hook on the host
module it corrects and runs when the host imports that module (at once if it already did). One fix per
module here, each tested on its own (``tests/unit/test_host_compat.py``); to add one, write its module
with an ``install()`` and list it in :data:`FIXES`.
"""

from __future__ import annotations

from nemotron3_super.host_compat import (cuda_on_cpu, dataset_helpers, lora_te_flags, mamba_stub, optimizer_resume,
                                         te_import, warning_filters)
from nemotron3_super.host_compat.te_import import have_transformer_engine

__all__ = ["apply_host_fixes", "have_transformer_engine"]  # the one entry point, and the one query others use

# Each module's install() registers its fix (cheap, idempotent).
FIXES = (te_import, mamba_stub, lora_te_flags, optimizer_resume, dataset_helpers, warning_filters, cuda_on_cpu)

_applied = False


def apply_host_fixes() -> None:
    """Install every host fix (idempotent; after the first call it returns at once)."""
    global _applied
    if _applied:
        return
    for fix in FIXES:
        fix.install()
    _applied = True
