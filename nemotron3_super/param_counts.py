"""Analytic parameter counts of a Nemotron-H architecture (stdlib only; HF layout, which holds the same
number of elements as Megatron's). The FLOP formula beside it (:mod:`nemotron3_super.flops`) is checked
against these counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nemotron3_super.hf_config import arch_error

if TYPE_CHECKING:
    from nemotron3_super.architecture import SuperArchitecture


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts in elements (HF layout; Megatron's layout holds the same number)."""

    total: int  # backbone + mtp
    backbone: int  # embeddings + layers + norm_f + lm_head
    mtp: int  # multi-token-prediction block(s); the HF forward does not use them
    active: int  # backbone elements one token touches (see count_params)
    mtp_active: int  # same rule applied to the MTP block
    embedding: int
    lm_head: int  # 0 when tied


def layer_params(arch: SuperArchitecture, symbol: str, *, active: bool = False) -> int:
    """Elements of one block incl. its pre-norm; ``active`` keeps only top-k routed experts."""
    h = arch.hidden_size
    if symbol == "M":
        bias = int(bool(arch.use_bias))
        conv = arch.mamba_conv_dim * (arch.conv_kernel + int(bool(arch.use_conv_bias)))
        return (h + (h + bias) * arch.mamba_in_proj_rows + conv
                + 3 * arch.mamba_num_heads  # A_log, D, dt_bias
                + arch.mamba_d_inner  # grouped RMSNorm weight
                + (arch.mamba_d_inner + bias) * h)  # out_proj
    if symbol == "*":
        q, kv = arch.attention_q_dim, arch.attention_kv_dim
        return h + h * (q + 2 * kv) + q * h
    if symbol == "-":
        inter = arch.intermediate_size
        return h + 2 * h * inter + int(bool(arch.mlp_bias)) * (inter + h)
    if symbol == "E":
        n, latent = arch.n_routed_experts, arch.moe_latent_size or 0
        picked = arch.num_experts_per_tok if active else n
        return (h + n * h + n  # norm, router weight, e_score_correction_bias
                + picked * 2 * arch.moe_intermediate_size * (latent or h)  # up + down
                + 2 * h * arch.moe_shared_expert_intermediate_size
                + 2 * h * latent)  # fc1/fc2_latent_proj
    raise arch_error(f"unknown layer symbol {symbol!r}")


def count_params(arch: SuperArchitecture) -> ParamCounts:
    """Analytic counts. ``active`` = every backbone element except the routed experts a token
    does not pick: embeddings, lm_head, norms, Mamba, attention, router + correction bias,
    shared expert, latent projections and the top-k routed experts. MTP: ``mtp_active``."""
    h, emb = arch.hidden_size, arch.vocab_size * arch.hidden_size
    head = 0 if arch.tie_word_embeddings else emb
    outer = emb + head + h  # + norm_f
    mtp_outer = 2 * h + 2 * h * h + h  # enorm + hnorm, eh_proj, final_layernorm

    def total(pattern: str, active: bool) -> int:
        return sum(layer_params(arch, s, active=active) for s in pattern)

    n_mtp, mtp_p = arch.num_nextn_predict_layers, arch.mtp_hybrid_override_pattern
    backbone = outer + total(arch.hybrid_override_pattern, False)
    mtp = n_mtp * (mtp_outer + total(mtp_p, False))
    return ParamCounts(total=backbone + mtp, backbone=backbone, mtp=mtp,
                       active=outer + total(arch.hybrid_override_pattern, True),
                       mtp_active=n_mtp * (mtp_outer + total(mtp_p, True)),
                       embedding=emb, lm_head=head)
