"""SuperModelProvider, layer-spec selection and the precision recipe, without building a model."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from nemotron3_super import architecture
from nemotron3_super.architecture import super_120b_a12b, tiny_super
from nemotron3_super.precision import BF16, MXFP8, NVFP4, nvfp4_unsupported_reason, precision_plan

SUPER_PATTERN = "MEMEMEM*EMEMEMEM*EMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEMEM*EMEMEMEM*EMEMEMEME"
SUPER_CONFIG = Path(architecture.__file__).parent / "configs" / "nemotron-3-super-120b-a12b.json"


@pytest.fixture(scope="module")
def provider_cls():
    from nemotron3_super.provider import SuperModelProvider

    return SuperModelProvider


@pytest.fixture(scope="module")
def super_provider(provider_cls):
    return provider_cls.from_architecture(super_120b_a12b())


def _published():
    from megatron.core.activations import squared_relu

    return {  # FACTS.md, "The model" and "Training facts"
        "hidden_size": 4096, "num_layers": 88, "hybrid_layer_pattern": SUPER_PATTERN,
        "num_attention_heads": 32, "num_query_groups": 2, "kv_channels": 128,
        "mamba_num_heads": 128, "mamba_head_dim": 64, "mamba_state_dim": 128, "mamba_num_groups": 8,
        "mamba_chunk_size": 128, "num_moe_experts": 512, "moe_router_topk": 22,
        "moe_ffn_hidden_size": 2688, "moe_shared_expert_intermediate_size": 5376, "moe_latent_size": 1024,
        "moe_router_score_function": "sigmoid", "moe_router_topk_scaling_factor": 5.0,
        "moe_router_enable_expert_bias": True, "moe_router_dtype": "fp32", "moe_router_num_groups": None,
        "vocab_size": 131072, "seq_length": 262144, "layernorm_epsilon": 1e-5, "normalization": "RMSNorm",
        "share_embeddings_and_output_weights": False, "position_embedding_type": "none",
        "activation_func": squared_relu, "gated_linear_unit": False, "add_bias_linear": False,
        "moe_shared_expert_overlap": False, "mtp_hybrid_override_pattern": "*E", "mtp_num_layers": 2,
        "mtp_use_repeated_layer": True, "mtp_loss_scaling_factor": 0.3, "precision": "bf16",
    }


@pytest.mark.parametrize("name", list(_published()))
def test_super_provider_has_published_hyperparameters(super_provider, provider_cls, name: str) -> None:
    expected = _published()[name]
    assert getattr(super_provider, name) == expected
    assert getattr(provider_cls(), name) == expected  # the bare provider is Super 120B-A12B too


def test_finalize_builds_megatron_pattern_with_two_mtp_depths(provider_cls) -> None:
    provider = provider_cls.from_architecture(super_120b_a12b())
    provider.finalize()
    assert provider.hybrid_layer_pattern == SUPER_PATTERN + "/*E/*E"  # one block, two depths
    assert provider.num_layers == 88 and provider.to_architecture() == super_120b_a12b()


def test_seed_debug_override_is_accepted(provider_cls) -> None:
    provider = provider_cls.from_architecture(super_120b_a12b(), hybrid_override_pattern="MEME*ME", num_layers=7)
    provider.finalize()
    assert provider.hybrid_layer_pattern == "MEME*ME/*E/*E" and provider.num_layers == 7
    assert provider.hybrid_override_pattern is None and provider.hidden_size == 4096


@pytest.mark.parametrize("source", ["dict", "folder", "file", "transformers"])
def test_from_hf_config_sources(provider_cls, tmp_path: Path, source: str) -> None:
    cfg = json.loads(SUPER_CONFIG.read_text())
    if source == "dict":
        arg = cfg
    elif source == "folder":
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        arg = tmp_path
    elif source == "file":
        arg = str(SUPER_CONFIG)
    else:
        from transformers import NemotronHConfig

        arg = NemotronHConfig(**cfg)
    assert provider_cls.from_hf_config(arg).to_architecture() == super_120b_a12b()


# ---------------------------------------------------------------------- clear errors
def _kv_arch():  # attention heads split by tp=6, KV heads (4) neither divide nor are divided by it
    return dataclasses.replace(tiny_super(), hybrid_override_pattern="*E*E", num_attention_heads=12,
                               num_key_value_heads=4, moe_shared_expert_intermediate_size=192)


@pytest.mark.parametrize(("arch", "overrides", "match"), [
    (super_120b_a12b, {"hybrid_override_pattern": "MEMX*ME", "num_layers": 7},
     r"unknown layer symbol 'X' at position 3"),
    (super_120b_a12b, {"hybrid_override_pattern": "MEME*ME"}, r"has 7 layers but num_layers=88"),
    (super_120b_a12b, {"expert_model_parallel_size": 3}, r"n_routed_experts=512 is not divisible by ep=3"),
    (super_120b_a12b, {"tensor_model_parallel_size": 3}, r"num_attention_heads=32 is not divisible by tp=3"),
    (_kv_arch, {"tensor_model_parallel_size": 6, "expert_model_parallel_size": 2},
     r"num_key_value_heads=4 does not fit tp=6"),
    (lambda: dataclasses.replace(tiny_super(), mamba_num_heads=6), {"tensor_model_parallel_size": 4},
     r"mamba_num_heads=6 is not divisible by tp=4"),
    (tiny_super, {"tensor_model_parallel_size": 4}, r"n_groups=2 is not divisible by tp=4"),
    (super_120b_a12b, {"moe_latent_size": 8192}, r"moe_latent_size=8192 is larger than hidden_size=4096"),
    (lambda: dataclasses.replace(super_120b_a12b(), conv_kernel=3), {}, r"conv_kernel=3 \(MambaMixer is built"),
    (super_120b_a12b, {"spec_impl": "fast"}, r"spec_impl='fast': expected one of"),
])
def test_invalid_configurations_raise_clear_errors(provider_cls, arch, overrides, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        provider_cls.from_architecture(arch(), **overrides)


def test_later_dotted_overrides_are_validated_in_finalize(provider_cls) -> None:
    provider = provider_cls.from_architecture(tiny_super())
    provider.hybrid_override_pattern = "MEMG*ME"  # megatron's GDN symbol: not a Super layer
    with pytest.raises(ValueError, match=r"unknown layer symbol 'G'"):
        provider.finalize()
    provider = provider_cls.from_architecture(tiny_super())
    provider.expert_model_parallel_size = 3
    with pytest.raises(ValueError, match=r"n_routed_experts=8 is not divisible by ep=3"):
        provider.finalize()
    with pytest.raises(TypeError, match=r"no field\(s\) \['num_experts'\]"):
        provider_cls.from_architecture(tiny_super(), num_experts=4)


def test_nvfp4_falls_back_to_bf16_with_a_warning(provider_cls) -> None:
    from nemotron3_super.provider import PrecisionFallbackWarning

    reason = nvfp4_unsupported_reason()
    if reason is None:
        pytest.skip("this machine runs NVFP4 (Blackwell GPU with Transformer Engine)")
    provider = provider_cls.from_architecture(tiny_super(), precision="nvfp4")
    with pytest.warns(PrecisionFallbackWarning,
                      match=r"precision='nvfp4' cannot run here: .*(no CUDA GPU|not Blackwell).*"
                            r"Falling back to precision='bf16'"):
        provider.finalize()
    assert provider.precision == "bf16" and provider.fp4 is None and provider.quant_recipe is None
    strict = provider_cls.from_architecture(tiny_super(), precision="nvfp4", allow_precision_fallback=False)
    with pytest.raises(RuntimeError, match=r"cannot run here.*allow_precision_fallback=False"):
        strict.finalize()


# ---------------------------------------------------------------------- layer spec selection
def test_layer_spec_selection_without_te(caplog: pytest.LogCaptureFixture) -> None:
    from nemotron3_super.layer_specs import SuperHybridStack, resolve_spec_kind, select_layer_spec, te_unusable_reason

    reason = te_unusable_reason()
    if reason is None:
        pytest.skip("Transformer Engine is usable here")
    assert select_layer_spec("local").module is SuperHybridStack
    with caplog.at_level(logging.INFO, logger="nemotron3_super.layer_specs"):
        assert resolve_spec_kind("auto") == "local"
    lines = [r.getMessage() for r in caplog.records if r.name == "nemotron3_super.layer_specs"]
    assert lines == [f"{reason}: using the TE-free local layer spec (megatron-core local modules)"]
    with pytest.raises(RuntimeError, match=r"layer spec 'te' requested but .*'local' spec"):
        select_layer_spec("te")
    with pytest.raises(ValueError, match=r"layer spec kind 'tee'"):
        select_layer_spec("tee")


# ---------------------------------------------------------------------- precision recipe
@pytest.mark.parametrize(("module", "expected"), [
    ("decoder.layers.0.mixer.in_proj", NVFP4),
    ("decoder.layers.0.mixer.out_proj", MXFP8),
    ("decoder.layers.0.norm", BF16),
    ("decoder.layers.1.mlp.experts.local_experts.3.linear_fc1", NVFP4),
    ("decoder.layers.1.mlp.experts.linear_fc2", NVFP4),  # TE grouped experts
    ("decoder.layers.1.mlp.shared_experts.linear_fc1", NVFP4),
    ("decoder.layers.1.mlp.fc1_latent_proj", BF16),
    ("decoder.layers.1.mlp.fc2_latent_proj", BF16),
    ("decoder.layers.1.mlp.router", BF16),
    ("decoder.layers.7.self_attention.linear_qkv", BF16),
    ("decoder.layers.7.self_attention.linear_proj", BF16),
    ("decoder.layers.73.mlp.experts.linear_fc1", NVFP4),  # layer 74 of 88: last NVFP4 one
    ("decoder.layers.74.mlp.experts.linear_fc1", BF16),  # the last 14 layers (74..87) are BF16
    ("decoder.layers.74.mixer.out_proj", BF16),
    ("decoder.layers.87.mixer.in_proj", BF16),
    ("mtp.layers.0.mtp_model_layer.layers.1.mlp.experts.linear_fc1", BF16),
    ("mtp.layers.0.eh_proj", BF16),
    ("embedding.word_embeddings", BF16),
    ("output_layer", BF16),
])
def test_nvfp4_recipe_module_precisions(module: str, expected: str) -> None:
    plan = precision_plan(super_120b_a12b(), NVFP4)
    assert plan.module_precision(module) == expected
    assert precision_plan(super_120b_a12b(), BF16).module_precision(module) == BF16


def test_nvfp4_recipe_megatron_fields() -> None:
    from megatron.core.quantization.quant_config import MatchContext, RecipeConfig

    plan = precision_plan(super_120b_a12b(), NVFP4)
    assert plan.summary() == {NVFP4: 74, BF16: 14}
    fields = plan.megatron_fields()
    assert {k: v for k, v in fields.items() if k != "quant_recipe"} == {
        "fp4": "e2m1", "fp4_recipe": "nvfp4", "fp4_param": False, "fp8": None, "first_last_layers_bf16": True,
        "num_layers_at_start_in_bf16": 0, "num_layers_at_end_in_bf16": 14}
    recipe = RecipeConfig.from_config_dict(fields["quant_recipe"])  # megatron-core's own matcher

    def key(path: str) -> str | None:
        match = recipe.match(MatchContext(module_path=path, layer_number=None))
        return match.config_key if match else None

    assert key("decoder.layers.0.mixer.out_proj") == MXFP8
    assert key("decoder.layers.4.self_attention.linear_qkv") == BF16
    assert key("decoder.layers.1.mlp.fc2_latent_proj") == BF16
    assert key("mtp.layers.0.mtp_model_layer.layers.1.mlp.experts.linear_fc1") == BF16
    assert key("decoder.layers.1.mlp.experts.linear_fc1") is None  # NVFP4 from the layer context
    assert fields["quant_recipe"]["configs"][MXFP8]["training_recipe"]["fp8_quantization_recipe"] == "mxfp8"
    with pytest.raises(ValueError, match=r"precision='fp16': expected one of bf16, nvfp4, fp8"):
        precision_plan(super_120b_a12b(), "fp16")
    tiny = precision_plan(tiny_super(), NVFP4)  # 7-layer debug model: same 14/88 fraction -> 1 BF16 layer
    assert tiny.layer_precision == (NVFP4,) * 6 + (BF16,) and tiny.megatron_fields()["num_layers_at_end_in_bf16"] == 1


def test_training_seq_length_does_not_leak_into_the_architecture() -> None:
    """A recipe's training length (seq_length) must not become config.json's max_position_embeddings."""
    from nemotron3_super.architecture import super_120b_a12b
    from nemotron3_super.provider import super_120b_a12b_provider

    provider = super_120b_a12b_provider(seq_length=4096)
    assert provider.max_position_embeddings == 262144
    assert provider.to_architecture() == super_120b_a12b()
    provider.num_layers = 7
    with pytest.raises(ValueError, match=r"has 88 layers but num_layers=7"):
        provider.validate()


def test_nano_provider_has_no_latent_moe() -> None:
    """Nano's config has no moe_latent_size: the provider must not keep Super's default of 1024."""
    from nemotron3_super.provider import nano_30b_a3b_provider

    provider = nano_30b_a3b_provider()
    assert provider.moe_latent_size is None and provider.hidden_size == 2688
