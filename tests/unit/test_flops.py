"""``nemotron3_super.flops`` (the benchmark's TFLOP/s) against counts made without its formula.

Independent count: transformers' NemotronH (eager attention, eager per-expert loop) is run on CPU under
``torch.utils.flop_counter.FlopCounterMode``, which tallies every matmul actually executed, per module.
So projections, router, latent projections, the top-k experts each token really visits, the shared expert,
attention's full s x s score/context products, the Mamba in/out projections and the LM head are measured,
not derived. Not measured: HF's torch SSD path is not the chunked SSD algorithm (and mostly elementwise,
which the counter does not see) and HF builds no MTP modules, so the SSD term is checked against hand
arithmetic, the conv against the built conv weight, and MTP against the measured blocks of its kinds. At Super scale the matmul FLOPs must be 2 x the active
matmul parameters from ``SuperArchitecture.param_counts`` (an independent parameter count).
"""

from __future__ import annotations

import dataclasses

import pytest

from nemotron3_super import flops as formula
from nemotron3_super.architecture import super_120b_a12b, tiny_super

SEQ = 64  # shorter than the 128-token SSD chunk: one chunk of 64



@pytest.fixture(scope="module")
def measured() -> dict:
    """FLOPs per token of each HF module, from one executed forward of the tiny model."""
    import torch
    import transformers  # declared dependencies: a missing one is a broken setup, not a skip
    from torch.utils.flop_counter import FlopCounterMode

    arch = tiny_super()
    config = transformers.NemotronHConfig(**arch.to_hf_config_dict({"dtype": "float32"}),
                                          attn_implementation="eager", experts_implementation="eager")
    torch.manual_seed(0)
    model = transformers.NemotronHForCausalLM(config).eval()
    tokens = torch.randint(0, arch.vocab_size, (1, SEQ))
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        model(tokens)
    per_module = {name.split(".", 1)[-1]: sum(ops.values()) / SEQ for name, ops in counter.get_flop_counts().items()}
    conv = {name: m.weight.shape for name, m in model.named_modules() if isinstance(m, torch.nn.Conv1d)}
    return {"arch": arch, "flops": per_module, "conv": conv}


def test_each_block_matches_the_executed_matmuls(measured) -> None:
    arch, flops = measured["arch"], measured["flops"]
    assert set(arch.hybrid_override_pattern) == {"M", "E", "*"} and arch.moe_latent_size
    for i, symbol in enumerate(arch.hybrid_override_pattern):
        terms = formula.block_flops(arch, symbol, SEQ)
        if symbol == "M":  # the projections; HF's SSD/conv arithmetic is version-dependent, checked below
            for proj in ("in_proj", "out_proj"):
                assert flops[f"model.layers.{i}.mixer.{proj}"] == terms[proj], f"layer {i} {proj}"
        else:  # every matmul the block executed
            assert flops[f"model.layers.{i}"] == sum(terms.values()), f"layer {i} ({symbol})"
    assert flops["lm_head"] == formula.forward_flops_per_token(arch, SEQ, 2)["lm_head"] == 2 * 128 * 256


def test_moe_counts_only_topk_experts_and_latent_width(measured) -> None:
    arch, flops = measured["arch"], measured["flops"]
    e = arch.hybrid_override_pattern.index("E")
    routed = flops[f"model.layers.{e}.mixer.experts"]
    assert routed == formula.block_flops(arch, "E", SEQ)["routed_experts"]
    assert routed == 2 * 2 * 64 * 64 * 2  # top-2 experts x (up + down) x latent 64 x ffn 64 x 2 FLOPs/MAC
    assert flops[f"model.layers.{e}.mixer.fc1_latent_proj"] + flops[f"model.layers.{e}.mixer.fc2_latent_proj"] == (
        formula.block_flops(arch, "E", SEQ)["latent_proj"])


def test_attention_counts_the_full_square(measured) -> None:
    arch, flops = measured["arch"], measured["flops"]
    a = arch.hybrid_override_pattern.index("*")
    terms = formula.block_flops(arch, "*", SEQ)
    projections = sum(flops[f"model.layers.{a}.mixer.{p}"] for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert flops[f"model.layers.{a}"] - projections == terms["scores"] + terms["context"] == 4 * 128 * SEQ


def test_mamba_conv_and_ssd_terms(measured) -> None:
    arch = measured["arch"]
    terms = formula.block_flops(arch, "M", SEQ)
    channels, _, taps = measured["conv"]["model.layers.0.mixer.conv1d"]
    assert terms["conv1d"] == 2 * channels * taps  # depthwise: one multiply-add per channel and tap
    # d_inner 128, 2 groups x state 16, one chunk of 64 tokens: intra-chunk C.B^T (2*64*32) and its product
    # with x (2*64*128), chunk state B^T x (2*16*128) and its read-out C.state (2*16*128)
    assert terms["ssd"] == 2 * 64 * 32 + 2 * 64 * 128 + 2 * 16 * 128 + 2 * 16 * 128
    longer = formula.block_flops(arch, "M", 4096)["ssd"]  # chunk capped at 128 tokens: linear in s, not quadratic
    assert longer == 2 * 128 * (128 + 32) + 4 * 16 * 128


def test_mtp_and_total(measured) -> None:
    arch, flops = measured["arch"], measured["flops"]
    per_kind = {s: flops[f"model.layers.{arch.hybrid_override_pattern.index(s)}"] for s in "E*"}  # MTP: "*E"
    eh_proj = dict(arch.hf_tensors())["mtp.layers.0.eh_proj.weight"]  # [h, 2h]
    depth = 2 * eh_proj[0] * eh_proj[1] + sum(per_kind[s] for s in arch.mtp_hybrid_override_pattern) + flops["lm_head"]
    fwd = formula.forward_flops_per_token(arch, SEQ, 2)
    assert fwd["mtp"] == 2 * depth  # the one "*E" block runs at 2 depths, each with its own LM head
    assert formula.forward_flops_per_token(arch, SEQ, 0)["mtp"] == 0
    backbone = sum(formula.block_flops(arch, s, SEQ)[t] for s in arch.hybrid_override_pattern
                   for t in formula.block_flops(arch, s, SEQ))
    assert formula.model_flops_per_token(arch, SEQ, 2) == 3 * (backbone + flops["lm_head"] + 2 * depth)
    no_mtp = dataclasses.replace(arch, num_nextn_predict_layers=0, mtp_hybrid_override_pattern="")
    assert formula.forward_flops_per_token(no_mtp, SEQ, 2)["mtp"] == 0  # no MTP block: depths ignored


def test_super_matmul_flops_are_twice_the_active_matmul_params() -> None:
    """Released Super: per token, every matmul weight a token touches is used once (2 FLOPs per element)."""
    arch = super_120b_a12b()
    counts = arch.param_counts()
    h, heads, d = arch.hidden_size, arch.mamba_num_heads, arch.mamba_d_inner
    pattern = arch.hybrid_override_pattern
    not_matmul = (counts.embedding + h  # lookup table, final norm
                  + len(pattern) * h  # one pre-norm per block
                  + pattern.count("M") * (arch.mamba_conv_dim * (arch.conv_kernel + 1) + 3 * heads + d)
                  + pattern.count("E") * arch.n_routed_experts)  # conv, A_log/D/dt_bias, gated norm, expert bias
    linear = sum(v for s in pattern for k, v in formula.block_flops(arch, s, 4096).items()
                 if k not in ("scores", "context", "ssd", "conv1d"))
    assert linear + 2 * h * arch.vocab_size == 2 * (counts.active - not_matmul)
