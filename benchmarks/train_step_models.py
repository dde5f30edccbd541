"""The models train_step.py builds: the benchmark shape, our provider, and building either provider's model
(same seed, same device rules) with failures recorded as data."""

from __future__ import annotations

import dataclasses
import gc
import traceback
from dataclasses import dataclass
from typing import Any

from nemotron3_super.architecture import SuperArchitecture, super_120b_a12b
from nemotron3_super.conversion.process_groups import cpu_current_device

# build settings, not model settings: the same for both models (GPU: weights made and initialised on the GPU;
# host probes and --build-only: not initialised)
BUILD_MECHANICS = ("use_cpu_initialization", "perform_initialization")


def bench_arch(hidden: int, pattern: str, mtp_pattern: str, experts: int, topk: int, latent: int | None,
               vocab: int, seq: int) -> SuperArchitecture:
    """Super 120B-A12B scaled to ``hidden``: every width keeps Super's ratio to the hidden size."""
    base = super_120b_a12b()
    if hidden % 256:
        raise SystemExit(f"--hidden {hidden}: expected a multiple of 256 (attention heads of {base.head_dim} "
                         f"and Mamba heads of {base.mamba_head_dim} in {base.n_groups} groups, as Super)")

    def scaled(width: int) -> int:  # Super's width at hidden 4096 -> same ratio at `hidden`
        return width * hidden // base.hidden_size

    try:
        return dataclasses.replace(
            base, hidden_size=hidden, hybrid_override_pattern=pattern, vocab_size=vocab,
            max_position_embeddings=seq,  # both providers take seq_length from it
            num_attention_heads=scaled(base.num_attention_heads),  # x head_dim 128 = hidden, as Super
            mamba_num_heads=scaled(base.mamba_num_heads),  # x 64 = d_inner 2 x hidden, as Super
            n_routed_experts=experts, num_experts_per_tok=topk,
            moe_intermediate_size=scaled(base.moe_intermediate_size),
            moe_shared_expert_intermediate_size=scaled(base.moe_shared_expert_intermediate_size),
            moe_latent_size=latent or None, intermediate_size=scaled(base.intermediate_size),
            num_nextn_predict_layers=1 if mtp_pattern else 0, mtp_hybrid_override_pattern=mtp_pattern)
    except ValueError as exc:
        raise SystemExit(f"shape not valid: {exc}") from None


def shape_summary(arch: SuperArchitecture, mtp_depths: int) -> dict[str, Any]:
    """The fields that fix the model's shape (HF names) plus the MTP depth count."""
    keys = ("hidden_size", "hybrid_override_pattern", "vocab_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "chunk_size",
            "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
            "moe_shared_expert_intermediate_size", "moe_latent_size", "mtp_hybrid_override_pattern")
    out = {k: getattr(arch, k) for k in keys}
    out["mtp_depths"] = mtp_depths if arch.mtp_hybrid_override_pattern else 0
    return out


def reseed(seed: int, cuda: bool) -> None:
    """Same seed before every build, so both implementations start from the same RNG state."""
    import torch
    from megatron.core.tensor_parallel import random as mp_random

    torch.manual_seed(seed)
    if cuda:
        mp_random.model_parallel_cuda_manual_seed(seed)
    else:  # no CUDA RNG to fork: megatron's inference tracker makes fork() a no-op (CPU draws)
        mp_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)


def free_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@dataclass(frozen=True)
class Run:
    """Settings shared by every build of one benchmark run."""

    mtp_depths: int
    dispatcher: str
    cuda: bool
    seed: int

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"


def ours_provider(arch: SuperArchitecture, run: Run, mem_eff: bool, init: bool = True,
                  experts: str = "grouped") -> Any:
    """This library's provider, TE-free local spec (it turns the TE/apex-only fusions off itself);
    ``experts``: "grouped" (GroupedMLP, the default) or "sequential" (megatron-core's SequentialMLP)."""
    from nemotron3_super.provider import SuperModelProvider

    mtp = {"mtp_num_layers": run.mtp_depths} if arch.mtp_hybrid_override_pattern else {}
    provider = SuperModelProvider.from_architecture(
        arch, spec_impl="local", use_mamba_mem_eff_path=mem_eff, moe_token_dispatcher_type=run.dispatcher,
        moe_grouped_gemm=experts == "grouped",
        sequence_parallel=False, use_cpu_initialization=not run.cuda, perform_initialization=init, **mtp)
    provider.finalize()
    return provider


def provide(provider: Any, run: Run) -> Any:
    """Build the model; on GPU in bf16 like tests/gpu/test_tiny_train.py (``.cuda().bfloat16()``)."""
    reseed(run.seed, run.cuda)
    with cpu_current_device():  # CPU: megatron-core's few cuda.current_device() allocations
        model = provider.provide()
    return model.cuda().bfloat16() if run.cuda else model


def error_record(exc: BaseException) -> dict[str, str]:
    """The exception's message, the innermost frame that raised it and, when that frame is not in
    megatron, the innermost megatron frame on the way."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []

    def where(frame: traceback.FrameSummary) -> str:
        return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} ({frame.name})"

    text = where(frames[-1]) if frames else "?"
    if frames and "megatron/" not in frames[-1].filename:
        inner = next((f for f in reversed(frames) if "megatron/" in f.filename), None)
        text += f", called from {where(inner)}" if inner else ""
    return {"error": f"{type(exc).__name__}: {exc}", "raised_at": text}
