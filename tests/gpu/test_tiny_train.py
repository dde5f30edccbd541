"""Tiny Super-shaped model on GPU with the TE-free local spec (the lent GPU machine has no TE).

    source .whl/prelude.sh; python3 -m pytest tests/gpu -q -s                          # one GPU: training
    source .whl/prelude.sh; torchrun --nproc-per-node=2 -m pytest tests/gpu -q -s -k two_gpu   # TP=2, EP=2

causal-conv1d is absent there, so Mamba runs with ``use_mamba_mem_eff_path=False`` (nn.Conv1d + the
Triton SSD scan); the provider's local spec turns off the TE/apex-only fusions itself. TP=2 runs with
sequence parallelism (megatron-core refuses MoE training at TP > 1 without it).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (run tests/gpu through the device tool)"),
]
two_gpus = pytest.mark.skipif(WORLD_SIZE < 2, reason="needs 2 ranks: torchrun --nproc-per-node=2 -m pytest tests/gpu")
BATCH, SEQ = 4, 64


def _tiny_model(tp: int = 1, ep: int = 1) -> torch.nn.Module:
    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.provider import SuperModelProvider

    provider = SuperModelProvider.from_architecture(
        tiny_super(), spec_impl="local", use_mamba_mem_eff_path=False,
        sequence_parallel=tp > 1,  # megatron-core trains MoE at TP > 1 only with sequence parallelism
        tensor_model_parallel_size=tp, expert_model_parallel_size=ep)
    provider.finalize()
    # like megatron's Float16Module: the whole model in bf16 (the router's FP32 expert bias is restored
    # by megatron-core at each forward)
    return provider.provide().cuda().bfloat16()


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fixed batch of random tokens (same on every rank); labels are the next tokens."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 256, (BATCH, SEQ + 1), generator=gen).cuda()
    positions = torch.arange(SEQ, device="cuda").expand(BATCH, SEQ)
    return tokens[:, :-1].contiguous(), positions, tokens[:, 1:].contiguous()


def _loss(model: torch.nn.Module, batch) -> torch.Tensor:
    tokens, positions, labels = batch
    per_token = model(tokens, positions, None, labels=labels)  # [b, s]; MTP loss joins in backward
    return per_token.float().mean()


@pytest.mark.skipif(WORLD_SIZE > 1, reason="single-GPU test; started under torchrun")
def test_tiny_super_trains_in_bf16_on_one_gpu(model_parallel) -> None:
    model_parallel(tp=1, ep=1)
    model = _tiny_model()
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    batch, losses = _batch(), []
    for _ in range(30):
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"\n[{torch.cuda.get_device_name()}] tiny Super bf16 losses: " + " ".join(f"{x:.3f}" for x in losses))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], f"loss did not fall on a repeated batch: {losses[0]:.3f} -> {losses[-1]:.3f}"


def _forward_backward(model: torch.nn.Module) -> float:
    loss = _loss(model, _batch())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert math.isfinite(loss.item())
    return loss.item()


@two_gpus
def test_tiny_super_forward_backward_tp2(model_parallel) -> None:
    from megatron.core import parallel_state

    model_parallel(tp=2, ep=1)
    model = _tiny_model(tp=2)
    attn = model.decoder.layers[4].self_attention
    assert attn.linear_qkv.weight.shape[0] == (4 * 32 + 2 * 2 * 32) // 2  # q + k + v rows, split in 2
    loss = _forward_backward(model)
    spread = torch.tensor([loss, -loss], device="cuda")
    torch.distributed.all_reduce(spread, op=torch.distributed.ReduceOp.MAX,
                                 group=parallel_state.get_tensor_model_parallel_group())
    assert spread[0] + spread[1] < 1e-3, "TP ranks disagree on the loss"
    print(f"\n[rank {torch.distributed.get_rank()}] TP=2 loss {loss:.4f}")


@two_gpus
def test_tiny_super_forward_backward_ep2(model_parallel) -> None:
    model_parallel(tp=1, ep=2)
    model = _tiny_model(ep=2)
    assert len(model.decoder.layers[1].mlp.experts.local_experts) == 4  # 8 experts over 2 ranks
    loss = _forward_backward(model)
    print(f"\n[rank {torch.distributed.get_rank()}] EP=2 loss {loss:.4f}")
