"""Two MoE layers from the TE-free spec, one with grouped experts and one with SequentialMLP, holding the
same weights: the fixture of the numerics tests (CPU here, CUDA in tests/gpu). Not a test file."""

from __future__ import annotations

import contextlib
import dataclasses

import torch

# LatentMoE with every size different (hidden 64 -> latent 32 -> ffn 48), so a transposed or swapped
# weight cannot go unnoticed; 8 experts, top-2
SIZES = dict(hidden_size=64, hybrid_override_pattern="E", n_routed_experts=8, num_experts_per_tok=2,
             moe_intermediate_size=48, moe_latent_size=32, moe_shared_expert_intermediate_size=64,
             num_nextn_predict_layers=0, mtp_hybrid_override_pattern="")
ZERO_TOKEN_EXPERTS = (2, 5)  # their router bias is pushed down so far that no token picks them


def moe_layer(grouped: bool, dtype: torch.dtype, device: str = "cpu", dispatcher: str = "allgather",
              perform_initialization: bool = False, **sizes) -> torch.nn.Module:
    """One LatentMoELayer built through the local spec (needs megatron's parallel state); ``sizes``
    override :data:`SIZES` (architecture fields)."""
    from megatron.core.process_groups_config import ProcessGroupCollection

    from nemotron3_super.architecture import tiny_super
    from nemotron3_super.conversion.process_groups import cpu_current_device
    from nemotron3_super.layer_specs import local_layer_spec
    from nemotron3_super.provider import SuperModelProvider

    arch = dataclasses.replace(tiny_super(), **{**SIZES, **sizes})
    provider = SuperModelProvider.from_architecture(
        arch, spec_impl="local", moe_grouped_gemm=grouped, params_dtype=dtype, bf16=dtype == torch.bfloat16,
        use_cpu_initialization=device == "cpu", perform_initialization=perform_initialization,
        moe_token_dispatcher_type=dispatcher)
    provider.finalize()
    build = local_layer_spec(provider).submodules.moe_layer.submodules.mlp
    with cpu_current_device() if device == "cpu" else contextlib.nullcontext():
        layer = build(config=provider, layer_number=1, pg_collection=ProcessGroupCollection.use_mpu_process_groups())
    return layer.to(device).train()


def sequential_name(name: str, expert: int | None = None) -> str:
    """A grouped layer's tensor name in the SequentialMLP layer (``expert``: for the stacked ones)."""
    for proj in ("linear_fc1", "linear_fc2"):
        if name == f"experts.{proj}_weight":
            return f"experts.local_experts.{expert}.{proj}.weight"
    return name


def paired_layers(dtype: torch.dtype, device: str = "cpu", dispatcher: str = "allgather", seed: int = 0,
                  **sizes) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(grouped, sequential) layers with the same random weights and FP32 router expert bias."""
    grouped, sequential = (moe_layer(g, dtype, device, dispatcher, **sizes) for g in (True, False))
    gen = torch.Generator().manual_seed(seed)
    seq_tensors = sequential.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in grouped.state_dict(keep_vars=True).items():
            if not isinstance(tensor, torch.Tensor) or name.endswith("_extra_state"):
                continue
            value = torch.randn(tensor.shape, generator=gen, dtype=torch.float32) * 0.2
            if name.endswith("router.expert_bias"):
                value[list(ZERO_TOKEN_EXPERTS)] = -1e4
            tensor.copy_(value)
            if name.startswith("experts.linear_fc"):
                for e in range(tensor.shape[0]):
                    seq_tensors[sequential_name(name, e)].copy_(tensor[e])
            else:
                seq_tensors[name].copy_(tensor)
    assert grouped.router.expert_bias.dtype == torch.float32  # the FP32 router bias path is in play
    return grouped, sequential


def run(layer: torch.nn.Module, hidden: torch.Tensor, upstream: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward + backward; the output, the input gradient and every weight gradient, by grouped name."""
    from nemotron3_super.conversion.process_groups import cpu_current_device

    hidden = hidden.detach().clone().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    with cpu_current_device() if hidden.device.type == "cpu" else contextlib.nullcontext():
        output, bias = layer(hidden)  # the router moves its weight to torch.cuda.current_device()
    assert bias is None
    (output.float() * upstream).sum().backward()
    out = {"output": output.detach(), "input.grad": hidden.grad}
    for name, param in layer.named_parameters():
        out[f"{name}.grad"] = param.grad if param.grad is not None else torch.zeros_like(param)
    return out


def as_grouped(results: dict[str, torch.Tensor], num_experts: int) -> dict[str, torch.Tensor]:
    """A SequentialMLP layer's results with per-expert gradients stacked like the grouped layer's."""
    out = {k: v for k, v in results.items() if ".local_experts." not in k}
    for proj in ("linear_fc1", "linear_fc2"):
        out[f"experts.{proj}_weight.grad"] = torch.stack(
            [results[f"experts.local_experts.{e}.{proj}.weight.grad"] for e in range(num_experts)])
    return out


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are zero)."""
    a, b = a.double(), b.double()
    norm = b.norm().item()
    return (a - b).norm().item() / norm if norm else (a - b).norm().item()
