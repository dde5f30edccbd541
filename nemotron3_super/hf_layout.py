"""The HF checkpoint's tensor layout of a Nemotron-H architecture: every on-disk name and shape (stdlib only).

The MTP numbering lives here once (:func:`mtp_layer`, and which tensors a depth keeps on its first and
last block); the bridge's name table builds its MTP names on the same helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nemotron3_super.architecture import SuperArchitecture

Shape = tuple[int, ...]

# the router correction bias: FP32 on disk whatever the model dtype (routing is decided on it)
FP32_HF_SUFFIX = "mixer.gate.e_score_correction_bias"
MTP_FIRST_BLOCK = ("enorm.weight", "hnorm.weight", "eh_proj.weight")  # a depth's own tensors, on its first HF block
MTP_LAST_BLOCK = ("final_layernorm.weight",)  # ... and on its last


def mtp_layer(depth: int, block: int, pattern_length: int) -> int:
    """HF index of MTP depth ``depth``'s block ``block``: HF numbers every depth's blocks flat
    (``mtp.layers.{depth * len(pattern) + block}``); Megatron nests them under the depth."""
    return depth * pattern_length + block


def block_tensors(arch: SuperArchitecture, prefix: str, symbol: str) -> Iterator[tuple[str, Shape]]:
    """(name, shape) of one layer-stack block of kind ``symbol`` under ``prefix``."""
    h, m = arch.hidden_size, f"{prefix}.mixer"

    def linear(name: str, rows: int, cols: int, bias: bool | None = False) -> Iterator:
        yield f"{m}.{name}.weight", (rows, cols)
        if bias:
            yield f"{m}.{name}.bias", (rows,)

    yield f"{prefix}.norm.weight", (h,)
    if symbol == "M":
        heads, d_inner, conv = arch.mamba_num_heads, arch.mamba_d_inner, arch.mamba_conv_dim
        yield from ((f"{m}.A_log", (heads,)), (f"{m}.D", (heads,)),
                    (f"{m}.conv1d.weight", (conv, 1, arch.conv_kernel)))
        if arch.use_conv_bias:
            yield f"{m}.conv1d.bias", (conv,)
        yield f"{m}.dt_bias", (heads,)
        yield from linear("in_proj", arch.mamba_in_proj_rows, h, arch.use_bias)
        yield f"{m}.norm.weight", (d_inner,)
        yield from linear("out_proj", h, d_inner, arch.use_bias)
    elif symbol == "*":
        q, kv = arch.attention_q_dim, arch.attention_kv_dim
        for name, rows, cols in (("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)):
            yield from linear(name, rows, cols)
    elif symbol == "-":
        yield from linear("up_proj", arch.intermediate_size, h, arch.mlp_bias)
        yield from linear("down_proj", h, arch.intermediate_size, arch.mlp_bias)
    elif symbol == "E":
        n, inter = arch.n_routed_experts, arch.moe_intermediate_size
        d_in = arch.moe_latent_size or h
        yield from linear("gate", n, h)
        yield f"{prefix}.{FP32_HF_SUFFIX}", (n,)
        for e in range(n):
            yield from linear(f"experts.{e}.up_proj", inter, d_in)
            yield from linear(f"experts.{e}.down_proj", d_in, inter)
        shared = arch.moe_shared_expert_intermediate_size
        yield from linear("shared_experts.up_proj", shared, h)
        yield from linear("shared_experts.down_proj", h, shared)
        if arch.moe_latent_size:
            yield from linear("fc1_latent_proj", arch.moe_latent_size, h)
            yield from linear("fc2_latent_proj", h, arch.moe_latent_size)


def hf_tensors(arch: SuperArchitecture) -> Iterator[tuple[str, Shape]]:
    """(name, shape) of every tensor in the released on-disk HF layout.

    ``backbone.*`` (released spelling ``backbone.embeddings``; transformers 5.12 writes
    ``backbone.embedding``), per-expert up/down, ``lm_head`` unless tied, then ``mtp.*`` (see
    :func:`mtp_layer`; released models have 1 depth).
    """
    h, mtp = arch.hidden_size, arch.mtp_hybrid_override_pattern
    yield "backbone.embeddings.weight", (arch.vocab_size, h)
    for i, sym in enumerate(arch.hybrid_override_pattern):
        yield from block_tensors(arch, f"backbone.layers.{i}", sym)
    yield "backbone.norm_f.weight", (h,)
    if not arch.tie_word_embeddings:
        yield "lm_head.weight", (arch.vocab_size, h)
    own_shapes = {"enorm.weight": (h,), "hnorm.weight": (h,), "eh_proj.weight": (h, 2 * h),
                  "final_layernorm.weight": (h,)}
    for depth in range(arch.num_nextn_predict_layers):
        for i, sym in enumerate(mtp):
            prefix = f"mtp.layers.{mtp_layer(depth, i, len(mtp))}"
            if i == 0:
                yield from ((f"{prefix}.{n}", own_shapes[n]) for n in MTP_FIRST_BLOCK)
            yield from block_tensors(arch, prefix, sym)
            if i == len(mtp) - 1:
                yield from ((f"{prefix}.{n}", own_shapes[n]) for n in MTP_LAST_BLOCK)
