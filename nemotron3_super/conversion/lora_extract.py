"""Megatron side of the LoRA export: the adapters of a LoRA-wrapped Megatron model as ``LoraDelta`` objects in
HF on-disk naming, through the bridge's name table (imports the host; the PEFT writer,
:mod:`nemotron3_super.conversion.peft_export`, does not)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from megatron.bridge.models.conversion.param_mapping import split_qkv_weights

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.bridge.pairing import registry_for
from nemotron3_super.conversion.peft_export import LoraDelta, PeftExportError, PeftExportReport, write_peft_adapter
from nemotron3_super.recipes import LORA_TARGETS


def apply_lora(model: torch.nn.Module, targets: Iterable[str] = LORA_TARGETS, dim: int = 32,
               alpha: int = 32) -> torch.nn.Module:
    """The host's LoRA (``megatron.bridge.peft.lora.LoRA``) on a built model, TE or not. The host's LoRA
    adapts per-expert linears (SequentialMLP, TE's GroupedLinear), not GroupedMLP's stacked weights: a
    model with those and expert targets is refused rather than left without expert adapters."""
    from megatron.bridge.peft.lora import LoRA

    from nemotron3_super.grouped_experts import GroupedMLP

    grouped = next((n for n, m in model.named_modules() if isinstance(m, GroupedMLP)), None)
    if grouped and {"linear_fc1", "linear_fc2"} & set(targets):
        raise PeftExportError(f"LoRA on routed experts needs per-expert linears, but {grouped} is a GroupedMLP: "
                              "build the model with moe_grouped_gemm=False (SequentialMLP experts)")
    return LoRA(target_modules=list(targets), dim=dim, alpha=alpha)(model, training=True)


def lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Megatron base-linear name -> the LoRA wrapper (``.to_wrap`` base, ``.adapter`` A/B)."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "adapter") and hasattr(m, "to_wrap")}


def megatron_lora_deltas(model: torch.nn.Module, arch: SuperArchitecture) -> list[LoraDelta]:
    """Every adapter of ``model`` (TP = 1) as LoRA factors in HF on-disk naming (QKV split per head group)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized() and (
            parallel_state.get_tensor_model_parallel_world_size() > 1
            or parallel_state.get_expert_model_parallel_world_size() > 1):
        raise PeftExportError("adapter export reads full adapters: run it at TP = EP = 1")
    registry = registry_for(arch)
    out: list[LoraDelta] = []
    for name, wrapper in lora_modules(model).items():
        adapter = wrapper.adapter
        A = adapter.linear_in.weight.detach().float().cpu()
        B = adapter.linear_out.weight.detach().float().cpu()
        if A.ndim != 2 or B.ndim != 2:
            raise PeftExportError(f"{name}: grouped/shared-outer expert adapters are not supported "
                                  f"(got A {tuple(A.shape)}, B {tuple(B.shape)})")
        mapping = registry.megatron_to_hf_lookup(f"{name}.weight")
        if mapping is None:
            raise PeftExportError(f"{name}: adapter on a module with no HF name in the bridge table")
        r, alpha = int(adapter.dim), float(adapter.alpha)
        if isinstance(mapping.hf_param, dict):  # fused QKV: split B's rows like the base weight's
            q, k, v = split_qkv_weights(model.config, B, feature_dim=B.shape[1])
            for role, part in (("q", q), ("k", k), ("v", v)):
                out.append(LoraDelta(name, mapping.hf_param[role], A, part.contiguous(), alpha, r))
        else:  # identical row layout at TP = 1 (Mamba in_proj z|xBC|dt included)
            out.append(LoraDelta(name, mapping.hf_param, A, B, alpha, r))
    return out


def export_adapter(model: torch.nn.Module, arch: SuperArchitecture, out: str | Path, **kwargs) -> PeftExportReport:
    """Write ``model``'s LoRA adapters as an HF PEFT folder at ``out`` (see ``peft_export.write_peft_adapter``)."""
    return write_peft_adapter(megatron_lora_deltas(model, arch), arch, out, **kwargs)
