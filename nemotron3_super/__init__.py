"""Nemotron 3 Super (hybrid Mamba-2 + attention + LatentMoE + MTP) for NeMo Megatron-Bridge.

Kept import-light on purpose: heavy modules (torch, megatron) are imported by the submodules that
need them, so `import nemotron3_super` stays cheap for listings and plugin discovery.

The host fixes are applied here, the one place, before any submodule can import the host: they only
register hooks (no import of torch or megatron); see :mod:`nemotron3_super.host_compat`.
"""

from nemotron3_super.host_compat import apply_host_fixes

__version__ = "0.1.0.dev0"

apply_host_fixes()
