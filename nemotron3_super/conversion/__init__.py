"""HF <-> Megatron conversion for the Nemotron-H family (Super, Nano): commands, I/O, audit, compare.

Importing any submodule makes megatron-core's Mamba modules importable where mamba-ssm was built
without its CUDA extensions (CPU boxes): see :func:`nemotron3_super.host_compat.ensure_mamba_ssm_importable`.
"""

from __future__ import annotations

from nemotron3_super.host_compat import ensure_mamba_ssm_importable

ensure_mamba_ssm_importable()
