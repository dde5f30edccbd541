"""Grouped experts (GroupedMLP) against SequentialMLP on one GPU, bf16, forward + backward.

    source .whl/prelude.sh; python3 -m pytest tests/gpu/test_grouped_experts_gpu.py -q -s

The CPU tests (tests/integration/test_grouped_experts.py) run torch's CPU grouped_mm; on Hopper the same
call runs the CUTLASS grouped GEMM (bf16, 16-byte aligned strides), a different kernel. Checked here, with
no timing involved: a LatentMoE layer with either expert module gives the same output and gradients (bf16
relative L2 <= 1e-2) through both token dispatchers (allgather, alltoall), with experts that get no token;
the kernel at Super's real expert shapes (512 experts, 1024 -> 2688 -> 1024, 4,096 x 22 routed tokens,
uneven counts with empty experts) matches an FP32 per-expert loop, forward and both gradients, without
copying the weights; unaligned sizes fall back to the per-expert loop and agree too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # the shared layer-pair helper
from expert_pair import SIZES, ZERO_TOKEN_EXPERTS, as_grouped, paired_layers, relative_l2, run  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run through the device tool)"),
]
BF16_TOLERANCE = 1e-2


@pytest.mark.parametrize("dispatcher", ["allgather", "alltoall"])
def test_grouped_equals_sequential_on_cuda(model_parallel, dispatcher: str) -> None:
    model_parallel()
    grouped, sequential = paired_layers(torch.bfloat16, device="cuda", dispatcher=dispatcher)
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(128, 2, SIZES["hidden_size"], generator=gen).to("cuda", torch.bfloat16)
    upstream = torch.randn(128, 2, SIZES["hidden_size"], generator=gen).cuda()
    counts = []
    grouped.experts.register_forward_hook(lambda m, args, out: counts.append(args[1].tolist()))
    got = run(grouped, hidden, upstream)
    want = as_grouped(run(sequential, hidden, upstream), SIZES["n_routed_experts"])
    assert [counts[0][e] for e in ZERO_TOKEN_EXPERTS] == [0, 0], counts
    errors = {name: relative_l2(got[name], want[name]) for name in want}
    print(dispatcher, {k: f"{v:.1e}" for k, v in errors.items()})
    assert all(err <= BF16_TOLERANCE for err in errors.values()), errors
    for proj in ("linear_fc1", "linear_fc2"):
        assert not got[f"experts.{proj}_weight.grad"][list(ZERO_TOKEN_EXPERTS)].any()


def _uneven_counts(experts: int, tokens: int, gen: torch.Generator) -> list[int]:
    """Random uneven counts summing to ``tokens``, with the first, a middle and the last expert empty."""
    weights = torch.rand(experts, generator=gen) ** 3
    weights[[0, experts // 2, experts - 1]] = 0
    counts = (weights / weights.sum() * tokens).floor().long()
    counts[1] += tokens - int(counts.sum())
    return counts.tolist()


@pytest.mark.parametrize("experts,d_in,ffn,tokens", [(512, 1024, 2688, 4096 * 22), (16, 100, 36, 999)],
                         ids=["super-shapes", "unaligned-fallback"])
def test_grouped_linear_kernel_matches_an_fp32_loop(experts: int, d_in: int, ffn: int, tokens: int) -> None:
    from nemotron3_super.grouped_experts import grouped_linear, grouped_mm_usable

    gen = torch.Generator().manual_seed(5)
    counts = _uneven_counts(experts, tokens, gen)
    x = (torch.randn(tokens, d_in, generator=gen) * 0.5).to("cuda", torch.bfloat16).requires_grad_(True)
    w = (torch.randn(experts, ffn, d_in, generator=gen) * 0.05).to("cuda", torch.bfloat16).requires_grad_(True)
    assert grouped_mm_usable(x, w) == (d_in % 8 == 0 and ffn % 8 == 0)
    offsets = torch.tensor(counts, device="cuda").cumsum(0).to(torch.int32)
    storage = w.untyped_storage().data_ptr()
    y = grouped_linear(x, w, offsets, None)
    upstream = torch.randn(y.shape, generator=gen).to("cuda", torch.bfloat16)
    y.backward(upstream)
    assert w.untyped_storage().data_ptr() == storage and w.grad.shape == w.shape

    x32, w32 = x.detach().float().requires_grad_(True), w.detach().float().requires_grad_(True)
    ref = torch.cat([part @ w32[e].t() for e, part in enumerate(torch.split(x32, counts))])
    ref.backward(upstream.float())
    errors = {"output": relative_l2(y, ref), "input.grad": relative_l2(x.grad, x32.grad),
              "weight.grad": relative_l2(w.grad, w32.grad)}
    print(f"{experts} experts {d_in}->{ffn}", {k: f"{v:.1e}" for k, v in errors.items()})
    assert all(err <= BF16_TOLERANCE for err in errors.values()), errors
    empty = [e for e, c in enumerate(counts) if c == 0]
    assert empty and not w.grad[empty].any()
