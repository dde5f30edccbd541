"""The FP8 (Hopper) plan next to the NVFP4 one, the NVFP4 -> FP8 fallback choice, and the provider defaults
that follow what is installed (Apex's wgrad kernel, flash-attn). Packages are made present for real by
putting stand-in modules on ``sys.path`` (``find_spec`` then finds them), absent by leaving them out."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemotron3_super.architecture import super_120b_a12b, tiny_super
from nemotron3_super.precision import BF16, FP8, FP8_SCALINGS, NVFP4, precision_plan, unsupported_reason


def _recipe_key(fields: dict, path: str) -> str | None:
    from megatron.core.quantization.quant_config import MatchContext, RecipeConfig

    recipe = RecipeConfig.from_config_dict(fields["quant_recipe"])  # megatron-core's own matcher
    match = recipe.match(MatchContext(module_path=path, layer_number=None))
    return match.config_key if match else None


@pytest.mark.parametrize("scaling", ["current", "blockwise"])
def test_fp8_plan_keeps_the_published_bf16_exclusions(scaling: str) -> None:
    plan = precision_plan(super_120b_a12b(), FP8, fp8_scaling=scaling)
    assert plan.summary() == {FP8: 74, BF16: 14}  # the last 14 of 88 layers stay BF16, as for NVFP4
    fields = plan.megatron_fields()
    fmt, recipe = FP8_SCALINGS[scaling]
    assert {k: v for k, v in fields.items() if k != "quant_recipe"} == {
        "fp4": None, "fp8": fmt, "fp8_recipe": recipe, "fp8_param": False, "first_last_layers_bf16": True,
        "num_layers_at_start_in_bf16": 0, "num_layers_at_end_in_bf16": 14}
    for path in ("decoder.layers.4.self_attention.linear_qkv", "decoder.layers.1.mlp.fc1_latent_proj",
                 "mtp.layers.0.eh_proj", "output_layer", "embedding.word_embeddings"):
        assert _recipe_key(fields, path) == BF16, path
    # unlike NVFP4 (MXFP8 there, a Blackwell format): Mamba out_proj runs the layer's FP8
    assert _recipe_key(fields, "decoder.layers.0.mixer.out_proj") is None
    assert plan.module_precision("decoder.layers.0.mixer.out_proj") == FP8
    assert plan.module_precision("decoder.layers.1.mlp.experts.linear_fc1") == FP8
    assert plan.module_precision("decoder.layers.80.mixer.in_proj") == BF16
    assert "mxfp8" not in fields["quant_recipe"]["configs"]


def test_fp8_delayed_scaling_names_bf16_layers_as_rules() -> None:
    """megatron-core rejects first_last_layers_bf16 with delayed scaling; the plan still keeps them BF16."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    fields = precision_plan(super_120b_a12b(), FP8, fp8_scaling="delayed").megatron_fields()
    assert fields["fp8_recipe"] == "delayed" and fields["first_last_layers_bf16"] is False
    assert _recipe_key(fields, "decoder.layers.74.mlp.experts.linear_fc1") == BF16
    assert _recipe_key(fields, "decoder.layers.87.mixer.in_proj") == BF16
    assert _recipe_key(fields, "decoder.layers.73.mlp.experts.linear_fc1") is None  # FP8 from the layer
    # the same fields pass megatron-core's own validation (it raised for first_last_layers_bf16 + delayed)
    TransformerConfig(num_layers=8, hidden_size=64, num_attention_heads=4, fp8=fields["fp8"],
                      fp8_recipe=fields["fp8_recipe"], first_last_layers_bf16=fields["first_last_layers_bf16"])
    with pytest.raises(ValueError, match="Delayed scaling does not support first / last layer in BF16"):
        TransformerConfig(num_layers=8, hidden_size=64, num_attention_heads=4, fp8="hybrid",
                          fp8_recipe="delayed", first_last_layers_bf16=True)


def test_unknown_fp8_scaling_is_named() -> None:
    with pytest.raises(ValueError, match=r"fp8_scaling='mx': expected one of current, delayed, blockwise"):
        precision_plan(tiny_super(), FP8, fp8_scaling="mx")


@pytest.mark.parametrize(("precision", "message"), [
    (FP8, r"precision='fp8' cannot run here: .*(no CUDA GPU|compute capability).*Falling back to precision='bf16'"),
    (NVFP4, r"precision='nvfp4' cannot run here: .*Falling back to precision='bf16'.*"
            r"precision_fallback='fp8' runs the FP8 plan instead"),  # the warning names the Hopper option
])
def test_unrunnable_precision_falls_back_to_bf16_with_the_reason(precision: str, message: str) -> None:
    from nemotron3_super.provider import PrecisionFallbackWarning, SuperModelProvider

    if unsupported_reason(precision) is None:
        pytest.skip(f"this machine runs {precision}")
    provider = SuperModelProvider.from_architecture(tiny_super(), precision=precision)
    with pytest.warns(PrecisionFallbackWarning, match=message):
        provider.finalize()
    assert provider.precision == BF16 and provider.fp8 is None and provider.fp4 is None
    assert provider.quant_recipe is None


@pytest.mark.skipif(unsupported_reason(NVFP4) is None, reason="this machine runs NVFP4 (Blackwell with TE)")
def test_nvfp4_falls_back_to_fp8_only_when_asked_and_possible() -> None:
    from nemotron3_super.provider import PrecisionFallbackWarning, SuperModelProvider

    asked = SuperModelProvider.from_architecture(tiny_super(), precision=NVFP4, precision_fallback=FP8)
    with pytest.warns(PrecisionFallbackWarning) as record:
        asked.finalize()
    if unsupported_reason(FP8) is None:  # Hopper with TE: the FP8 plan runs
        assert asked.precision == FP8 and asked.fp8 == "hybrid"
    else:  # no FP8 here either: BF16, and the warning does not promise FP8
        assert asked.precision == BF16 and "precision='bf16'" in str(record[0].message)
    with pytest.raises(ValueError, match=r"precision_fallback='fp4': expected 'bf16' or 'fp8'"):
        SuperModelProvider.from_architecture(tiny_super(), precision_fallback="fp4")


# ---------------------------------------------------------------------- defaults that follow the install
def _stand_in(root: Path, module: str) -> None:
    """An importable (never imported here) module ``module`` under ``root``."""
    parts = module.split(".")
    folder = root.joinpath(*parts)
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("raise ImportError('stand-in: not for import')\n")


@pytest.mark.parametrize(("present", "fusion", "backend"), [
    ((), False, "auto"),  # pip-installed TE without Apex or flash-attn: the case that failed on the H200
    (("transformer_engine.pytorch",), False, "auto"),  # TE alone does not make the LM head fusable
    (("fused_weight_gradient_mlp_cuda",), True, "auto"),
    (("flash_attn",), False, "flash"),
    (("flash_attn_interface", "fused_weight_gradient_mlp_cuda"), True, "flash"),  # NVIDIA's container
])
def test_provider_defaults_follow_what_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    present: tuple[str, ...], fusion: bool, backend: str) -> None:
    from megatron.core.transformer.enums import AttnBackend

    from nemotron3_super import installed
    from nemotron3_super.provider import SuperModelProvider

    for name in ("fused_weight_gradient_mlp_cuda", "flash_attn", "flash_attn_interface"):
        if installed.module_installed(name) and name not in present:
            pytest.skip(f"{name} is really installed here")
    for name in present:
        _stand_in(tmp_path, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    provider = SuperModelProvider.from_architecture(tiny_super())
    assert provider.gradient_accumulation_fusion is fusion
    assert provider.attention_backend == AttnBackend[backend]
    assert installed.default_gradient_accumulation_fusion() is fusion
    # the local spec still switches everything TE/Apex-only off, whatever is installed
    local = SuperModelProvider.from_architecture(tiny_super(), spec_impl="local")
    local.finalize()
    assert local.gradient_accumulation_fusion is False and local.attention_backend == AttnBackend.local


def test_user_setting_wins_over_the_installed_default() -> None:
    from megatron.core.transformer.enums import AttnBackend

    from nemotron3_super.provider import SuperModelProvider

    provider = SuperModelProvider.from_architecture(tiny_super(), attention_backend=AttnBackend.fused,
                                                    gradient_accumulation_fusion=True)
    assert provider.attention_backend == AttnBackend.fused and provider.gradient_accumulation_fusion is True


def test_attention_env_of_an_earlier_model_does_not_block_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """megatron-core exports NVTE_*_ATTN per model and asserts later models agree: values it exported for a
    TE-free model must not stop a TE model built next in the same process; the user's own values stay."""
    from nemotron3_super import provider as provider_module

    monkeypatch.setattr(provider_module, "_USER_NVTE_ATTENTION",
                        {"NVTE_FLASH_ATTN": None, "NVTE_FUSED_ATTN": "1", "NVTE_UNFUSED_ATTN": None})
    for name in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN"):
        monkeypatch.setenv(name, "0")  # what megatron-core exports after building a local-spec model
    provider_module._restore_user_attention_env()
    import os

    assert "NVTE_FLASH_ATTN" not in os.environ and "NVTE_UNFUSED_ATTN" not in os.environ
    assert os.environ["NVTE_FUSED_ATTN"] == "1"  # the user's setting
