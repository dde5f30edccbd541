"""Which Mamba-2 kernels megatron-core will run here, read from the host's own import-time choices.

megatron-core decides at import: ``megatron.core.ssm.mamba_mixer`` sets ``HAVE_MAMBA_SSM`` (without
mamba-ssm, ``MambaMixer`` raises at construction) and ``causal_conv1d_fn`` (None without causal-conv1d);
mamba-ssm's ``ssd_combined`` sets ``causal_conv1d_fwd_function`` (None without causal-conv1d's CUDA
extension), which the memory-efficient path (``use_mamba_mem_eff_path=True``, megatron-core's default)
calls. Nothing here re-derives those choices: it reads the module globals the host will use. Used by
``nemotron3-super env`` and the train-step benchmark.
"""

from __future__ import annotations

MEM_EFF_KERNELS = "mamba_split_conv1d_scan_combined (causal-conv1d CUDA + Triton SSD, fused)"


def mamba_ssm_unavailable() -> str | None:
    """Why megatron-core cannot build Mamba layers here, or None when it can."""
    from megatron.core.ssm import mamba_mixer

    if mamba_mixer.HAVE_MAMBA_SSM:
        return None
    return ("mamba-ssm does not import, so megatron-core's MambaMixer raises at construction "
            "(install the [ssm] extra; README 'Compatibility')")


def mem_eff_unavailable() -> str | None:
    """Why the memory-efficient Mamba path cannot run here (it needs causal-conv1d's CUDA kernels)."""
    reason = mamba_ssm_unavailable()
    if reason:
        return reason
    from mamba_ssm.ops.triton import ssd_combined

    if ssd_combined.causal_conv1d_fwd_function is None:
        return "causal-conv1d's CUDA extension (causal_conv1d_cuda) does not import"
    return None


def mamba_kernels(mem_eff: bool) -> str:
    """The kernels a Mamba layer runs with ``use_mamba_mem_eff_path=mem_eff`` (megatron-core's choice)."""
    if mem_eff:
        return MEM_EFF_KERNELS
    from megatron.core.ssm import mamba_mixer

    conv = "nn.Conv1d" if mamba_mixer.causal_conv1d_fn is None else "causal_conv1d_fn"
    return f"{conv} + Triton mamba_chunk_scan_combined"
