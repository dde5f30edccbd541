"""Provider defaults that follow what is installed, decided in one place.

The host's defaults assume NVIDIA's training container (Transformer Engine, Apex and flash-attn all
present). A user with TE from PyPI usually has neither Apex nor flash-attn, and two host defaults then
stop the TE layer spec (first seen on an H200 with TE 2.20.2, megatron-core 0.19.2):

* ``gradient_accumulation_fusion``: the host turns it on when TE imports, but the LM head and the MTP
  output are megatron-core ``ColumnParallelLinear`` layers in every spec, and those need Apex's
  ``fused_weight_gradient_mlp_cuda`` for the fusion ("... fused_weight_gradient_mlp_cuda module is not
  found"). On only when that extension imports.
* ``attention_backend``: the host's Nemotron-H provider pins ``flash``, which exports
  ``NVTE_FLASH_ATTN=1 NVTE_FUSED_ATTN=0 NVTE_UNFUSED_ATTN=0``; without flash-attn TE then has no backend
  at all. ``flash`` only when flash-attn imports, else ``auto`` (TE picks cuDNN fused attention, or its
  unfused kernel).

Each answer is a plain function so that ``nemotron3-super env`` reports the same decision the provider
makes. Only ``importlib.util.find_spec`` is used: nothing here imports torch, TE or CUDA libraries.
"""

from __future__ import annotations

import importlib.util

APEX_WGRAD_MODULE = "fused_weight_gradient_mlp_cuda"  # Apex's CUDA extension for fused wgrad accumulation
FLASH_ATTN_MODULES = ("flash_attn", "flash_attn_interface")  # flash-attn 2, flash-attn 3 (Hopper)


def module_installed(name: str) -> bool:
    """True when ``name`` can be imported (found on the path; not imported here)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a broken __spec__
        return False


def have_apex_wgrad_fusion() -> bool:
    """Apex's fused weight-gradient accumulation kernel is importable."""
    return module_installed(APEX_WGRAD_MODULE)


def have_flash_attn() -> bool:
    """flash-attn 2 or 3 is importable (TE's FlashAttention backend needs one of them)."""
    return any(module_installed(name) for name in FLASH_ATTN_MODULES)


def default_gradient_accumulation_fusion() -> bool:
    """On only when every linear layer the model builds can fuse (Apex's kernel present)."""
    return have_apex_wgrad_fusion()


def default_attention_backend():  # -> megatron.core.transformer.enums.AttnBackend
    """``flash`` when flash-attn is installed (the host's choice), else ``auto``: TE then chooses among
    the backends it can run (cuDNN fused attention on Hopper). The local spec overrides this with
    ``local`` (no TE at all)."""
    from megatron.core.transformer.enums import AttnBackend

    return AttnBackend.flash if have_flash_attn() else AttnBackend.auto
