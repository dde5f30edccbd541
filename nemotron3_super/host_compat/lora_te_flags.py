"""The host's LoRA code sees the truth about Transformer Engine.

Without TE, megatron-core still defines placeholder ``TE*`` classes, so the host's LoRA modules compute
``HAVE_TE = True`` and wrap local linears as if they were TE ones (wrong feature sizes at TP > 1, TE-only
calls). Right after each of those modules is imported, its flags are set to False, as they are in fact.
Nothing changes when TE is installed.
"""

from __future__ import annotations

import logging
from types import ModuleType

from nemotron3_super.host_compat import hooks
from nemotron3_super.host_compat.te_import import have_transformer_engine

logger = logging.getLogger(__name__)

TE_FLAGS = {  # host module -> its "TE is here" flags (Megatron-Bridge 0.6.x)
    "megatron.bridge.peft.utils": ("HAVE_TE", "HAVE_TE_COL_LINEAR", "HAVE_TE_LN_COL_LINEAR", "HAVE_TE_ROW_LINEAR",
                                   "HAVE_TE_LINEAR", "HAVE_TE_COL_GRP_LINEAR", "HAVE_TE_ROW_GRP_LINEAR"),
    "megatron.bridge.peft.module_matcher": ("HAVE_TE", "HAVE_TE_COL_LINEAR", "HAVE_TE_LN_COL_LINEAR",
                                            "HAVE_TE_ROW_LINEAR"),
}


def correct_flags(module: ModuleType) -> list[str]:
    """Set ``module``'s TE flags to False when TE is absent; returns the ones changed."""
    if have_transformer_engine():
        return []
    changed = []
    for flag in TE_FLAGS.get(module.__name__, ()):
        if getattr(module, flag, False):
            setattr(module, flag, False)
            changed.append(f"{module.__name__}.{flag}")
    if changed:
        logger.info("Transformer Engine not found: host LoRA uses its non-TE paths (%d flags corrected)", len(changed))
    return changed


def install() -> None:
    """Correct the flags of each host LoRA module when it is imported."""
    for name in TE_FLAGS:
        hooks.after_import(name, correct_flags)
