"""Model FLOPs per token of a Nemotron-H architecture (stdlib only, like the parameter counts beside it).

Used by ``benchmarks/train_step.py`` for TFLOP/s; checked against executed matmuls in
``tests/unit/test_flops.py``.

Model FLOPs per token (matmuls only, 2 FLOPs per multiply-add; training = 3 x forward because the backward
pass computes input and weight gradients, 2 x the forward matmuls). h hidden, s sequence, V vocab:

  attention ``*``  2h(q + 2kv) + 2qh          QKV and output projections (q = heads*head_dim, kv = kv_heads*head_dim)
                   + 4qs                      scores QK^T and context PV over the FULL s x s square (megatron's
                                              convention; causal masking makes half of it wasted work, still counted)
  Mamba-2 ``M``    2h(2d + 2GN + H) + 2dh     in_proj (z, xBC, dt) and out_proj (d = heads*head_dim, G groups,
                                              N state, H heads)
                   + 2c(d + 2GN)              depthwise causal conv1d over x, B, C (c = 4 taps)
                   + 2Q(d + GN) + 4Nd         chunked SSD scan, Q = min(chunk, s): per token, intra-chunk C.B^T
                                              (per group, 2QGN) and its product with x (per head, 2Qd), the chunk
                                              state B^T x (2Nd) and its read-out C.state (2Nd); the inter-chunk
                                              state recurrence (2HNP/Q per token) is left out
  MoE ``E``        2hE                        router (E routed experts)
                   + 4hL                      LatentMoE down/up projections h <-> L (L = moe_latent_size; 0 without)
                   + 4kL'F                    top-k relu2 routed experts, up + down (L' = L, or h without latent)
                   + 4hF_s                    shared expert (width F_s)
  dense MLP ``-``  4hF
  LM head          2hV                        per output head
  MTP              D x (4h^2 + blocks + 2hV)  for D depths, each: eh_proj [2h -> h], the MTP pattern's blocks
                                              and its own LM head; a repeated block (Super: 1 block run at 2
                                              depths) counts once per depth it runs
Norms, activations, routing softmax/top-k, the SSD's elementwise decay and gating, embedding lookups and
the loss are not counted. TFLOP/s = FLOPs/token x tokens/s.
"""

from __future__ import annotations

from nemotron3_super.architecture import SYMBOLS, SuperArchitecture


def block_flops(arch: SuperArchitecture, symbol: str, seq_len: int) -> dict[str, int]:
    """Forward matmul FLOPs per token of one block, by term (formula: module docstring)."""
    h = arch.hidden_size
    if symbol == "*":
        q, kv = arch.attention_q_dim, arch.attention_kv_dim
        return {"qkv_proj": 2 * h * (q + 2 * kv), "scores": 2 * q * seq_len, "context": 2 * q * seq_len,
                "out_proj": 2 * q * h}
    if symbol == "M":
        d, state = arch.mamba_d_inner, arch.ssm_state_size
        chunk = min(arch.chunk_size, seq_len)  # a sequence shorter than a chunk is one chunk
        return {"in_proj": 2 * h * arch.mamba_in_proj_rows,  # rows = 2d + 2GN + H
                "conv1d": 2 * arch.conv_kernel * arch.mamba_conv_dim,
                "ssd": 2 * chunk * (d + arch.n_groups * state) + 4 * state * d,
                "out_proj": 2 * d * h}
    if symbol == "E":
        latent = arch.moe_latent_size or 0
        return {"router": 2 * h * arch.n_routed_experts, "latent_proj": 4 * h * latent,
                "routed_experts": 4 * arch.num_experts_per_tok * (latent or h) * arch.moe_intermediate_size,
                "shared_expert": 4 * h * arch.moe_shared_expert_intermediate_size}
    if symbol == "-":
        return {"mlp": 4 * h * arch.intermediate_size}
    raise ValueError(f"unknown layer symbol {symbol!r}")


def forward_flops_per_token(arch: SuperArchitecture, seq_len: int, mtp_depths: int) -> dict[str, int]:
    """Forward matmul FLOPs per token, by part: backbone layer kinds, LM head, MTP (all depths)."""
    out = {SYMBOLS[symbol]: 0 for symbol in "M*E-"}
    for symbol in arch.hybrid_override_pattern:
        out[SYMBOLS[symbol]] += sum(block_flops(arch, symbol, seq_len).values())
    h, lm_head = arch.hidden_size, 2 * arch.hidden_size * arch.vocab_size
    out["lm_head"] = lm_head
    depths = mtp_depths if arch.mtp_hybrid_override_pattern else 0
    mtp_blocks = sum(sum(block_flops(arch, s, seq_len).values()) for s in arch.mtp_hybrid_override_pattern)
    out["mtp"] = depths * (2 * (2 * h) * h + mtp_blocks + lm_head)  # eh_proj [2h -> h] + blocks + LM head
    return out


def model_flops_per_token(arch: SuperArchitecture, seq_len: int, mtp_depths: int) -> int:
    """Training (forward + backward) model FLOPs per token: 3 x the forward matmul FLOPs."""
    return 3 * sum(forward_flops_per_token(arch, seq_len, mtp_depths).values())
