"""Megatron-Bridge imports without Transformer Engine.

``megatron/bridge/peft/lora_layers.py`` does an unguarded ``import transformer_engine.pytorch as te``
and ``import megatron.bridge`` reaches it through AutoBridge, so conversion fails on every CPU box.
When (and only when) TE cannot be found, that one module is executed with the import bound to an
inert namespace. ``transformer_engine`` is NOT put into ``sys.modules``: megatron-core's ``HAVE_TE``
stays False and it keeps its local modules. TE-fused LoRA layers are then unusable (they never were
without TE); nothing else changes.
"""

from __future__ import annotations

import importlib.util
import logging

from nemotron3_super.host_compat import hooks

logger = logging.getLogger(__name__)

PATCHED_MODULE = "megatron.bridge.peft.lora_layers"
TE_IMPORT = "import transformer_engine.pytorch as te"


def have_transformer_engine() -> bool:
    """True when the TE PyTorch extension is installed (not necessarily usable without a GPU).
    Imports the ``transformer_engine`` package when it exists: call it lazily."""
    try:
        return importlib.util.find_spec("transformer_engine") is not None and (
            importlib.util.find_spec("transformer_engine.pytorch") is not None
        )
    except (ImportError, ValueError):
        return False


class _AbsentTE(type):
    """``te.Anything`` is a fresh empty class: ``isinstance(x, te.Linear)`` is False, nothing more."""

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _AbsentTE(f"absent_te.{name}", (), {})


ABSENT_TE = _AbsentTE("absent_transformer_engine_pytorch", (), {})


def _without_te_import(source: str) -> str:
    """The module's source with its TE import bound to :data:`ABSENT_TE`; unchanged when TE is
    installed or the host no longer has that line (then it says itself what it needs)."""
    if TE_IMPORT not in source or have_transformer_engine():
        return source
    logger.info("Transformer Engine not found: importing Megatron-Bridge with its TE-only LoRA layers inert")
    return source.replace(TE_IMPORT, f"from {__name__} import ABSENT_TE as te", 1)


def install() -> None:
    """Guard the host's one unguarded TE import (applied when the host imports that module)."""
    hooks.replace_source(PATCHED_MODULE, _without_te_import)
