"""Build Super-shaped HybridModels on CPU with the TE-free spec (build only: Mamba's forward needs Triton).

Megatron's parameter count is compared with the analytic HF count. Megatron keeps the router's
``e_score_correction_bias`` as the FP32 buffer ``router.expert_bias`` (not a parameter), so the
count is parameters + those buffers. The MTP block is built once and run at 2 depths
(``mtp_use_repeated_layer``): its weights count once, as in the HF checkpoint.
"""

from __future__ import annotations

import logging

import pytest
import torch

from nemotron3_super.architecture import super_120b_a12b, tiny_super

pytestmark = pytest.mark.slow  # needs mamba-ssm (installed by .ci/env.sh): megatron-core's MambaMixer needs it to build
SUPER_TOTAL = 123_611_033_088  # FACTS.md: 120,668,707,840 backbone + 2,942,325,248 MTP


@pytest.fixture
def cpu_build(model_parallel):
    """TP=PP=EP=1 parallel state; on a machine without CUDA, megatron-core's hard-coded
    ``torch.cuda.current_device()`` allocations go to the current default device (cpu, or meta),
    exactly as the conversion commands build their models."""
    from nemotron3_super.conversion.process_groups import cpu_current_device

    model_parallel(tp=1, ep=1, pp=1)
    with cpu_current_device():
        yield


def _provider(arch, **overrides):
    from nemotron3_super.provider import SuperModelProvider

    # the alltoall dispatcher allocates a CUDA stream at build; allgather builds the same weights
    provider = SuperModelProvider.from_architecture(
        arch, spec_impl="local", use_cpu_initialization=True, moe_token_dispatcher_type="allgather",
        **overrides)
    provider.finalize()
    return provider


def megatron_count(model: torch.nn.Module) -> int:
    params = sum(p.numel() for p in model.parameters())
    return params + sum(b.numel() for name, b in model.named_buffers() if name.endswith("router.expert_bias"))


def test_tiny_super_builds_with_local_spec(cpu_build) -> None:
    from megatron.core.models.hybrid.hybrid_model import HybridModel
    from nemotron3_super.grouped_experts import GroupedMLP
    from nemotron3_super.layer_specs import LatentMoELayer, LocalDuplicatedLinear, SuperHybridStack

    arch = tiny_super()
    assert arch.hybrid_override_pattern == "MEME*ME" and arch.mtp_hybrid_override_pattern == "*E"
    assert arch.moe_latent_size and arch.n_routed_experts >= 4
    model = _provider(arch).provide()

    assert isinstance(model, HybridModel) and isinstance(model.decoder, SuperHybridStack)
    assert isinstance(model.decoder.final_norm, torch.nn.RMSNorm)  # not TENorm
    moe = model.decoder.layers[1].mlp
    assert isinstance(moe, LatentMoELayer) and isinstance(moe.experts, GroupedMLP)  # the local spec's default
    assert moe.experts.linear_fc1_weight.shape == (arch.n_routed_experts, arch.moe_intermediate_size,
                                                   arch.moe_latent_size)
    assert isinstance(moe.fc1_latent_proj, LocalDuplicatedLinear)
    assert moe.fc1_latent_proj.weight.shape == (arch.moe_latent_size, arch.hidden_size)
    assert moe.fc2_latent_proj.weight.shape == (arch.hidden_size, arch.moe_latent_size)
    assert moe.router.expert_bias.dtype == torch.float32
    assert model.mtp.mtp_num_depths == 2 and len(model.mtp.layers) == 1  # one block, 2 depths
    assert all(p.device.type == "cpu" for p in model.parameters())

    counted = megatron_count(model)
    print(f"tiny Super: {counted:,} Megatron elements (analytic {arch.param_counts().total:,})")
    assert counted == arch.param_counts().total
    mtp = sum(p.numel() for p in model.mtp.parameters()) + sum(
        b.numel() for n, b in model.mtp.named_buffers() if n.endswith("expert_bias"))
    assert mtp == arch.param_counts().mtp


def test_latent_moe_layer_matches_megatron_moe_layer(cpu_build) -> None:
    """LatentMoELayer repeats MoELayer.__init__; its attributes must track megatron-core's."""
    from megatron.core.transformer.moe.moe_layer import MoELayer

    from nemotron3_super.layer_specs import LatentMoELayer

    provider = _provider(tiny_super())
    no_latent = _provider(tiny_super(), moe_latent_size=None)
    latent_layer = provider.provide().decoder.layers[1].mlp
    plain_layer = no_latent.provide().decoder.layers[1].mlp
    assert type(plain_layer) is LatentMoELayer and isinstance(plain_layer, MoELayer)
    assert set(vars(latent_layer)) == set(vars(plain_layer))  # same plain attributes
    assert set(latent_layer._modules) == set(plain_layer._modules) | {"fc1_latent_proj", "fc2_latent_proj"}


def test_real_super_meta_build_parameter_count(cpu_build) -> None:
    arch = super_120b_a12b()
    assert arch.param_counts().total == SUPER_TOTAL
    provider = _provider(arch, perform_initialization=False)
    with torch.device("meta"):
        model = provider.provide()
    assert all(p.device.type == "meta" for p in model.parameters())
    counted = megatron_count(model)
    print(f"Super 120B-A12B (meta): {counted:,} Megatron elements")
    assert counted == SUPER_TOTAL


def test_auto_spec_without_te_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    from nemotron3_super.layer_specs import SuperHybridStack, select_layer_spec, te_unusable_reason

    if te_unusable_reason() is None:
        pytest.skip("Transformer Engine is usable here: 'auto' picks it")
    with caplog.at_level(logging.INFO, logger="nemotron3_super.layer_specs"):
        spec = select_layer_spec("auto")
    assert spec.module is SuperHybridStack
    lines = [r.getMessage() for r in caplog.records if r.name == "nemotron3_super.layer_specs"]
    assert len(lines) == 1 and "using the TE-free local layer spec" in lines[0]
    with pytest.raises(RuntimeError, match=r"layer spec 'te' requested but Transformer Engine"):
        select_layer_spec("te")
