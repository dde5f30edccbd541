"""Grouped experts (TE-free spec default) against megatron-core's SequentialMLP on CPU: same weights and
batch give the same output and every gradient (FP32 relative L2 <= 1e-6, BF16 <= 1e-2), with experts that
receive no token and the FP32 router expert bias in the path; the kernel-level helper on its own."""

from __future__ import annotations

import pytest
import torch
from expert_pair import SIZES, ZERO_TOKEN_EXPERTS, as_grouped, paired_layers, relative_l2, run

pytestmark = pytest.mark.slow  # builds megatron-core MoE layers (mamba-ssm import path via the spec)
TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_grouped_equals_sequential(model_parallel, dtype: torch.dtype) -> None:
    from nemotron3_super.grouped_experts import GroupedMLP

    model_parallel()
    grouped, sequential = paired_layers(dtype)
    assert isinstance(grouped.experts, GroupedMLP) and type(sequential.experts).__name__ == "SequentialMLP"
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(24, 2, SIZES["hidden_size"], generator=gen).to(dtype)  # [seq, batch, hidden]
    upstream = torch.randn(24, 2, SIZES["hidden_size"], generator=gen)
    counts = []
    grouped.experts.register_forward_hook(lambda m, args, out: counts.append(args[1].clone()))
    got = run(grouped, hidden, upstream)
    want = as_grouped(run(sequential, hidden, upstream), SIZES["n_routed_experts"])
    assert set(got) == set(want)
    tokens = counts[0].tolist()
    assert [tokens[e] for e in ZERO_TOKEN_EXPERTS] == [0, 0] and len(set(tokens)) > 2, tokens  # uneven, some 0
    errors = {name: relative_l2(got[name], want[name]) for name in want}
    print({k: f"{v:.1e}" for k, v in errors.items()})
    assert all(err <= TOLERANCE[dtype] for err in errors.values()), errors
    for proj in ("linear_fc1", "linear_fc2"):  # experts that saw no token get exactly zero gradient
        grad = got[f"experts.{proj}_weight.grad"]
        assert not grad[list(ZERO_TOKEN_EXPERTS)].any() and grad.abs().sum() > 0
    assert got["router.weight.grad"].abs().sum() > 0  # gradients reach the router through the probabilities


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("k,n", [(32, 48), (6, 10)], ids=["aligned", "unaligned-loop"])
def test_grouped_linear_matches_a_loop(dtype: torch.dtype, k: int, n: int) -> None:
    """The kernel call itself, with zero-row groups in front, middle and end (the unaligned sizes take
    the per-expert fallback, which must give the same)."""
    from nemotron3_super.grouped_experts import grouped_linear, grouped_mm_usable

    counts = [0, 5, 0, 3, 7, 0]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(sum(counts), k, generator=gen).to(dtype).requires_grad_(True)
    w = torch.randn(len(counts), n, k, generator=gen).to(dtype).requires_grad_(True)
    assert grouped_mm_usable(x, w) == (k == 32)
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    y = grouped_linear(x, w, offsets, None)
    ref = torch.cat([part.float() @ w[e].float().t() for e, part in enumerate(torch.split(x, counts))])
    assert y.shape == (sum(counts), n) and relative_l2(y, ref) <= TOLERANCE[dtype]
    y.float().square().sum().backward()
    assert not w.grad[[0, 2, 5]].any() and w.grad[[1, 3, 4]].abs().sum() > 0
    empty = grouped_linear(x[:0], w, torch.zeros(len(counts), dtype=torch.int32), None)
    assert empty.shape == (0, n)


def test_grouped_refuses_gated_experts(model_parallel) -> None:
    """GroupedMLP computes Super's non-gated experts only; a gated config is an error naming the field."""
    from megatron.core.process_groups_config import ProcessGroupCollection

    from nemotron3_super.grouped_experts import GroupedMLP
    from nemotron3_super.provider import tiny_super_provider

    model_parallel()
    provider = tiny_super_provider(spec_impl="local", gated_linear_unit=True, use_cpu_initialization=True)
    with pytest.raises(ValueError, match="gated_linear_unit=True.*moe_grouped_gemm=False"):
        GroupedMLP(4, provider, pg_collection=ProcessGroupCollection.use_mpu_process_groups())


def test_same_seed_same_initial_weights(model_parallel) -> None:
    """GroupedMLP draws its initial weights as SequentialMLP does (order, FP32 master, TP slice): the same
    seed builds the same layer, so benchmark rows of the two modules start from the same model."""
    from expert_pair import moe_layer, sequential_name

    model_parallel()
    layers = []
    for grouped in (True, False):
        torch.manual_seed(3)
        layers.append(moe_layer(grouped, torch.float32, perform_initialization=True))
    grouped, sequential = (dict(layer.state_dict()) for layer in layers)
    for name, tensor in grouped.items():
        if name.startswith("experts.linear_fc"):
            for e in range(tensor.shape[0]):
                assert torch.equal(tensor[e], sequential[sequential_name(name, e)]), (name, e)
        elif isinstance(tensor, torch.Tensor) and not name.endswith("_extra_state"):
            assert torch.equal(tensor, sequential[name]), name
    assert grouped["experts.linear_fc1_weight"].abs().sum() > 0


def test_lora_refuses_grouped_experts(model_parallel) -> None:
    """The host's LoRA has no adapter for stacked expert weights: asking for expert targets is an error
    naming the module, not a model whose routed experts silently stay without adapters."""
    from expert_pair import moe_layer

    from nemotron3_super.conversion.lora_extract import PeftExportError, apply_lora

    model_parallel()
    with pytest.raises(PeftExportError, match="experts is a GroupedMLP.*moe_grouped_gemm=False"):
        apply_lora(moe_layer(True, torch.float32))
