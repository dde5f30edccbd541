"""Nemotron 3 Super (hybrid Mamba-2 + attention + LatentMoE + MTP) for NeMo Megatron-Bridge.

Kept import-light on purpose: heavy modules (torch, megatron) are imported by the submodules that
need them, so `import nemotron3_super` stays cheap for listings and plugin discovery.
"""

__version__ = "0.1.0.dev0"
