"""The name table: HF <-> Megatron weight names for ``NemotronHForCausalLM`` (the whole Nemotron-H family;
Super is the superset).

The table below reads like the checkpoint: HF on-disk names (``backbone.*``, ``mtp.*``) against the
Megatron parameters of both layer specs (TE: fused norms, grouped experts ``weight{e}``; TE-free "local":
separate norms, stacked grouped experts ``linear_fc1_weight`` or per-expert ``local_experts``). A spec's
names that a built model lacks are simply never looked up.
Unlike the host's Nemotron-H bridge: a missing or unused tensor is an error; the embedding is written
as ``backbone.embeddings`` (``conversion.hf_io`` also reads transformers' ``backbone.embedding``); the
MTP attention norm is mapped in the TE-free layout too; the router correction bias stays FP32 both ways;
MTP tensors go through one class (:class:`MTPMapping`, the host's flattening class resolved to our mapping
kinds), whose numbering is :func:`nemotron3_super.hf_layout.mtp_layer`'s (tests/unit/test_bridge_table.py
checks that the two name the same HF tensors).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from megatron.bridge.models.nemotronh.nemotron_h_bridge import _MTPFlatteningMapping, _MTPFlatteningQKVMapping
from megatron.bridge.models.conversion.param_mapping import (
    AutoMapping,
    ColumnParallelMapping,
    MambaConv1dMapping,
    MambaInProjMapping,
    MegatronParamMapping,
    QKVMapping,
    ReplicatedMapping,
    RowParallelMapping,
)

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.bridge.expert_mapping import GroupedExpertMapping
from nemotron3_super.hf_layout import FP32_HF_SUFFIX, MTP_FIRST_BLOCK, MTP_LAST_BLOCK

# Megatron name (after the block prefix) -> HF name (after the block prefix), for every block kind.
BLOCK_NAMES: dict[str, str] = {
    # pre-norm: one HF `norm` per block; Megatron spells it per block kind, and TE fuses it into the next linear
    "norm.weight": "norm.weight",  # Mamba, local spec
    "mixer.in_proj.layer_norm_weight": "norm.weight",  # Mamba, TE spec
    "input_layernorm.weight": "norm.weight",  # attention, local spec
    "self_attention.linear_qkv.layer_norm_weight": "norm.weight",  # attention, TE spec
    "pre_mlp_layernorm.weight": "norm.weight",  # MoE (both specs), dense MLP (local spec)
    "mlp.linear_fc1.layer_norm_weight": "norm.weight",  # dense MLP, TE spec
    # attention output (Q/K/V: QKVMapping below)
    "self_attention.linear_proj.weight": "mixer.o_proj.weight",
    # dense relu2 MLP ('-' layers; Super has none)
    "mlp.linear_fc1.weight": "mixer.up_proj.weight",
    "mlp.linear_fc2.weight": "mixer.down_proj.weight",
    # MoE: router [experts, hidden]; its correction bias is RouterBiasMapping below
    "mlp.router.weight": "mixer.gate.weight",
    # shared expert (full hidden width)
    "mlp.shared_experts.linear_fc1.weight": "mixer.shared_experts.up_proj.weight",
    "mlp.shared_experts.linear_fc2.weight": "mixer.shared_experts.down_proj.weight",
    # routed experts, not gated: TE grouped GEMM (weight{e}) and local SequentialMLP (local_experts.{e})
    "mlp.experts.linear_fc1.weight*": "mixer.experts.*.up_proj.weight",
    "mlp.experts.linear_fc2.weight*": "mixer.experts.*.down_proj.weight",
    "mlp.experts.local_experts.*.linear_fc1.weight": "mixer.experts.*.up_proj.weight",
    "mlp.experts.local_experts.*.linear_fc2.weight": "mixer.experts.*.down_proj.weight",
}
# routed experts of the TE-free grouped module (GroupedMLP): one [local experts, out, in] tensor per
# projection <-> one HF tensor per expert; value: (HF name, the dimension expert-TP splits)
GROUPED_EXPERT_NAMES: dict[str, tuple[str, int]] = {
    "mlp.experts.linear_fc1_weight": ("mixer.experts.{expert}.up_proj.weight", 1),
    "mlp.experts.linear_fc2_weight": ("mixer.experts.{expert}.down_proj.weight", 2),
}
# LatentMoE: hidden 4096 -> latent 1024 before the routed experts, back after them. Full weights on every
# TP rank (TELinear / LocalDuplicatedLinear, parallel_mode "duplicated"): ReplicatedMapping.
LATENT_NAMES = {"mlp.fc1_latent_proj.weight": "mixer.fc1_latent_proj.weight",
                "mlp.fc2_latent_proj.weight": "mixer.fc2_latent_proj.weight"}
# Mamba-2 per-head / per-channel tensors: split over TP by heads (A_log, D, dt_bias) or norm groups.
MAMBA_COLUMN_NAMES = ("mixer.A_log", "mixer.D", "mixer.dt_bias", "mixer.norm.weight")
# Mamba conv1d over xBC channels: the local/TE MambaMixer owns raw parameters, older ones an nn.Conv1d.
MAMBA_CONV_NAMES = {"mixer.conv1d_weight": "mixer.conv1d.weight", "mixer.conv1d_bias": "mixer.conv1d.bias",
                    "mixer.conv1d.weight": "mixer.conv1d.weight", "mixer.conv1d.bias": "mixer.conv1d.bias"}
# Outside the layer stack.
MODEL_NAMES: dict[str, str] = {
    "embedding.word_embeddings.weight": "backbone.embeddings.weight",  # released spelling (plural)
    "decoder.final_norm.weight": "backbone.norm_f.weight",
    "decoder.final_layernorm.weight": "backbone.norm_f.weight",  # TransformerBlock's name for it
    "output_layer.weight": "lm_head.weight",
}


class RouterBiasMapping(ReplicatedMapping):
    """``router.expert_bias`` (FP32 buffer) <-> ``gate.e_score_correction_bias`` (FP32 on disk).

    Routing picks top-k on score + bias, so a BF16 round of the bias silently changes which experts run:
    both directions hand the tensor over as FP32 (an upcast of a BF16 input is exact)."""

    def hf_to_megatron(self, hf_weights: torch.Tensor, megatron_module: Any) -> torch.Tensor:
        return super().hf_to_megatron(hf_weights.float(), megatron_module)

    def megatron_to_hf(self, megatron_weights: torch.Tensor | None, megatron_module: Any) -> dict:
        return {name: t.float() for name, t in super().megatron_to_hf(megatron_weights, megatron_module).items()}


class MTPMapping(_MTPFlatteningMapping):
    """One MTP tensor, any depth: Megatron nests each depth's blocks, HF numbers them flat
    (d = depth, i = block, L = len(MTP pattern))::

        mtp.layers.{d}.mtp_model_layer.layers.{i}.self_attention.linear_proj.weight   (Megatron)
        mtp.layers.{d*L+i}.mixer.o_proj.weight                                         (HF)

    A depth's own tensors sit beside the nested blocks in Megatron and on its first / last HF block
    (``inner_override`` 0 or L-1): ``enorm``/``hnorm``/``eh_proj`` and ``final_layernorm``. Super has one
    block "*E" run at 2 depths but stored once (mtp_use_repeated_layer), as ``mtp.layers.0``.

    The host's flattening class (so the host's tools and tests recognise it), resolved to the mapping
    kind the backbone uses for the same tensor (router bias in FP32, Mamba in_proj / conv1d regrouping,
    per-head columns) instead of the host's plain AutoMapping.
    """

    def __init__(self, megatron_param: str, hf_param: str, *, mtp_layers_per_block: int,
                 inner_override: int | None = None, kind: type[MegatronParamMapping] = AutoMapping) -> None:
        super().__init__(megatron_param, hf_param, mtp_layers_per_block=mtp_layers_per_block,
                         inner_override=inner_override)
        self.kind = kind

    def resolve(self, captures: tuple[str, ...]) -> MegatronParamMapping:
        named = super().resolve(captures)
        return named if self.kind is AutoMapping else self.kind(named.megatron_param, named.hf_param)


def mtp_mappings(block_pattern: str, num_experts: int = 0) -> list[MegatronParamMapping]:
    """Every MTP mapping for an MTP block of ``block_pattern`` (any number of depths); [] without MTP."""
    size = len(block_pattern)
    if not size:
        return []
    meg, hf = "mtp.layers.*.mtp_model_layer.layers.*", "mtp.layers.*"
    out: list[MegatronParamMapping] = [
        MTPMapping(f"mtp.layers.*.{n}", f"mtp.layers.*.{n}", mtp_layers_per_block=size, inner_override=0)
        for n in MTP_FIRST_BLOCK]
    out += [MTPMapping(f"mtp.layers.*.{n}", f"mtp.layers.*.{n}", mtp_layers_per_block=size, inner_override=size - 1)
            for n in MTP_LAST_BLOCK]
    for kind, m, h in block_table(num_experts):
        if isinstance(h, dict):  # QKV: the host's flattening class resolves to a QKVMapping
            out.append(_MTPFlatteningQKVMapping(f"{meg}.{m}", **{r: f"{hf}.{n}" for r, n in h.items()},
                                                mtp_layers_per_block=size))
        else:
            out.append(MTPMapping(f"{meg}.{m}", f"{hf}.{h}", mtp_layers_per_block=size, kind=kind))
    return out


def block_table(num_experts: int = 0) -> list[tuple[Any, str, str | dict[str, str]]]:
    """(mapping kind, Megatron name, HF name or {role: HF name}) after the block prefix, every block kind;
    ``num_experts`` > 0 adds the grouped-expert tensors (one Megatron tensor, every expert's HF tensors)."""
    out: list = [(AutoMapping, m, h) for m, h in BLOCK_NAMES.items()]
    out += [(functools.partial(GroupedExpertMapping, num_experts=num_experts, tp_axis=axis), m, h)
            for m, (h, axis) in GROUPED_EXPERT_NAMES.items() if num_experts]
    out += [(ReplicatedMapping, m, h) for m, h in LATENT_NAMES.items()]
    out.append((RouterBiasMapping, "mlp.router.expert_bias", FP32_HF_SUFFIX))
    out.append((QKVMapping, "self_attention.linear_qkv.weight",
                {r: f"mixer.{r}_proj.weight" for r in ("q", "k", "v")}))
    out += [(ColumnParallelMapping, n, n) for n in MAMBA_COLUMN_NAMES]
    out.append((RowParallelMapping, "mixer.out_proj.weight", "mixer.out_proj.weight"))
    # in_proj rows z | xBC | dt are regrouped per TP rank; conv1d channels x | B | C likewise
    out.append((MambaInProjMapping, "mixer.in_proj.weight", "mixer.in_proj.weight"))
    out += [(MambaConv1dMapping, m, h) for m, h in MAMBA_CONV_NAMES.items()]
    return out


def block_mappings(meg: str, hf: str, num_experts: int = 0) -> list[MegatronParamMapping]:
    """Mappings for one layer-stack block of any kind: ``meg``/``hf`` are the two block prefixes;
    ``num_experts``: routed experts per MoE layer (0: no grouped-expert mappings)."""
    return [kind(f"{meg}.{m}", **{r: f"{hf}.{n}" for r, n in h.items()}) if isinstance(h, dict)
            else kind(f"{meg}.{m}", f"{hf}.{h}") for kind, m, h in block_table(num_experts)]


def super_mappings(arch: SuperArchitecture | None = None, *, mtp_pattern: str | None = None,
                   num_experts: int | None = None) -> list[MegatronParamMapping]:
    """Every mapping: model-level names, the backbone stack, then the MTP block (of ``arch``, or of
    ``mtp_pattern`` / ``num_experts`` when there is no whole architecture; neither: no MTP, no grouped experts)."""
    if mtp_pattern is None:
        mtp_pattern = arch.mtp_hybrid_override_pattern if arch is not None else ""
    out: list[MegatronParamMapping] = [AutoMapping(m, h) for m, h in MODEL_NAMES.items()]
    experts = (arch.n_routed_experts or 0) if arch is not None and num_experts is None else (num_experts or 0)
    out += block_mappings("decoder.layers.*", "backbone.layers.*", experts)
    return out + mtp_mappings(mtp_pattern, experts)
