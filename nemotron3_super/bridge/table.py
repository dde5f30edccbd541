"""The name table: HF <-> Megatron weight names for ``NemotronHForCausalLM`` (the whole Nemotron-H family;
Super is the superset).

The table below reads like the checkpoint: HF on-disk names (``backbone.*``, ``mtp.*``) against the
Megatron parameters of both layer specs (TE: fused norms, grouped experts ``weight{e}``; TE-free "local":
separate norms, stacked grouped experts ``linear_fc1_weight`` or per-expert ``local_experts``). A spec's
names that a built model lacks are simply never looked up.
Unlike the host's Nemotron-H bridge: a missing or unused tensor is an error; the embedding is written
as ``backbone.embeddings`` (``conversion.hf_io`` also reads transformers' ``backbone.embedding``); the
MTP attention norm is mapped in the TE-free layout too; the router correction bias stays FP32 both ways;
MTP index arithmetic lives in one class (:class:`MTPDepth`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
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
    "output_layer.weight": "lm_head.weight",
}
FP32_HF_SUFFIX = "mixer.gate.e_score_correction_bias"  # FP32 on disk whatever the model dtype


class RouterBiasMapping(ReplicatedMapping):
    """``router.expert_bias`` (FP32 buffer) <-> ``gate.e_score_correction_bias`` (FP32 on disk).

    Routing picks top-k on score + bias, so a BF16 round of the bias silently changes which experts run:
    both directions hand the tensor over as FP32 (an upcast of a BF16 input is exact)."""

    def hf_to_megatron(self, hf_weights: torch.Tensor, megatron_module: Any) -> torch.Tensor:
        return super().hf_to_megatron(hf_weights.float(), megatron_module)

    def megatron_to_hf(self, megatron_weights: torch.Tensor | None, megatron_module: Any) -> dict:
        return {name: t.float() for name, t in super().megatron_to_hf(megatron_weights, megatron_module).items()}


@dataclass(frozen=True)
class MTPDepth:
    """Where one MTP depth's tensors live on each side (all MTP index arithmetic is here).

    Megatron nests the depth's blocks; HF numbers them flat (d = depth, i = block, L = len(pattern))::

        mtp.layers.{d}.mtp_model_layer.layers.{i}.self_attention.linear_proj.weight   (Megatron)
        mtp.layers.{d*L+i}.mixer.o_proj.weight                                         (HF)

    The depth's own tensors sit beside the nested blocks in Megatron and on its first / last HF block::

        mtp.layers.{d}.enorm.weight            <-> mtp.layers.{d*L}.enorm.weight      (also hnorm, eh_proj)
        mtp.layers.{d}.final_layernorm.weight  <-> mtp.layers.{d*L+L-1}.final_layernorm.weight

    Super: one depth, pattern "*E", so HF mtp.layers.0 = attention and mtp.layers.1 = latent MoE. Megatron
    runs that single layer at 2 depths (mtp_use_repeated_layer) but stores it once, as mtp.layers.0.
    """

    depth: int
    pattern: str

    def block(self, i: int) -> tuple[str, str]:
        return (f"mtp.layers.{self.depth}.mtp_model_layer.layers.{i}",
                f"mtp.layers.{self.depth * len(self.pattern) + i}")

    def outer_names(self) -> dict[str, str]:
        first, last = self.depth * len(self.pattern), (self.depth + 1) * len(self.pattern) - 1
        names = {f"mtp.layers.{self.depth}.{n}": f"mtp.layers.{first}.{n}"
                 for n in ("enorm.weight", "hnorm.weight", "eh_proj.weight")}
        names[f"mtp.layers.{self.depth}.final_layernorm.weight"] = f"mtp.layers.{last}.final_layernorm.weight"
        return names


def block_mappings(meg: str, hf: str, num_experts: int = 0) -> list[MegatronParamMapping]:
    """Mappings for one layer-stack block of any kind: ``meg``/``hf`` are the two block prefixes;
    ``num_experts``: routed experts per MoE layer (0: no grouped-expert mappings)."""
    out: list[MegatronParamMapping] = [AutoMapping(f"{meg}.{m}", f"{hf}.{h}") for m, h in BLOCK_NAMES.items()]
    out += [GroupedExpertMapping(f"{meg}.{m}", f"{hf}.{h}", num_experts=num_experts, tp_axis=axis)
            for m, (h, axis) in GROUPED_EXPERT_NAMES.items() if num_experts]
    out += [ReplicatedMapping(f"{meg}.{m}", f"{hf}.{h}") for m, h in LATENT_NAMES.items()]
    out.append(RouterBiasMapping(f"{meg}.mlp.router.expert_bias", f"{hf}.{FP32_HF_SUFFIX}"))
    out.append(QKVMapping(f"{meg}.self_attention.linear_qkv.weight", q=f"{hf}.mixer.q_proj.weight",
                          k=f"{hf}.mixer.k_proj.weight", v=f"{hf}.mixer.v_proj.weight"))
    out += [ColumnParallelMapping(f"{meg}.{n}", f"{hf}.{n}") for n in MAMBA_COLUMN_NAMES]
    out.append(RowParallelMapping(f"{meg}.mixer.out_proj.weight", f"{hf}.mixer.out_proj.weight"))
    # in_proj rows z | xBC | dt are regrouped per TP rank; conv1d channels x | B | C likewise
    out.append(MambaInProjMapping(f"{meg}.mixer.in_proj.weight", f"{hf}.mixer.in_proj.weight"))
    out += [MambaConv1dMapping(f"{meg}.{m}", f"{hf}.{h}") for m, h in MAMBA_CONV_NAMES.items()]
    return out


def super_mappings(arch: SuperArchitecture) -> list[MegatronParamMapping]:
    """Every mapping for ``arch``: model-level names, the backbone stack, then each MTP depth."""
    out: list[MegatronParamMapping] = [AutoMapping(m, h) for m, h in MODEL_NAMES.items()]
    experts = arch.n_routed_experts or 0
    out += block_mappings("decoder.layers.*", "backbone.layers.*", experts)
    for d in range(arch.num_nextn_predict_layers):
        depth = MTPDepth(d, arch.mtp_hybrid_override_pattern)
        out += [AutoMapping(m, h) for m, h in depth.outer_names().items()]
        for i in range(len(arch.mtp_hybrid_override_pattern)):
            out += block_mappings(*depth.block(i), experts)
    return out
