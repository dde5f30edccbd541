"""Recipe factories for Nemotron 3 Super (installed as ``nemotron3_super.recipes``).

Importing this package is cheap: the factories (which import Megatron-Bridge, ~15 s) load on
first attribute access. :data:`RECIPES` is the registration table the plugin hands to the host.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class RecipeInfo(NamedTuple):
    target: str  # "module:function" returning a ConfigContainer
    mode: str  # "pretrain", "sft" or "peft" (the plugin hookspec's modes)
    description: str


# Megatron linears the LoRA recipe adapts (attention, MLP/expert and Mamba in/out projections; the latent
# projections stay frozen). The PEFT export maps each to its HF module.
LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "in_proj", "out_proj")

_FACTORIES = "nemotron3_super.recipes.factories"
RECIPES: dict[str, RecipeInfo] = {
    "nemotron3_super_pretrain_config": RecipeInfo(
        f"{_FACTORIES}:nemotron3_super_pretrain_config", "pretrain",
        "Super 120B-A12B pretraining, 64 GPUs TP1/PP2/EP32, seq 4096, GBS 1280, WSD 4.5e-4 -> 4.5e-6"),
    "nemotron3_super_pretrain_nvfp4_config": RecipeInfo(
        f"{_FACTORIES}:nemotron3_super_pretrain_nvfp4_config", "pretrain",
        "the same with the published NVFP4 recipe (Blackwell; BF16 fallback elsewhere)"),
    "nemotron3_super_sft_config": RecipeInfo(
        f"{_FACTORIES}:nemotron3_super_sft_config", "sft",
        "full SFT on SQuAD, 64 GPUs TP8/EP16, LR 5e-6"),
    "nemotron3_super_lora_config": RecipeInfo(
        f"{_FACTORIES}:nemotron3_super_lora_config", "peft",
        "LoRA r32/a32 on attention, MLP/expert and Mamba projections, 8 GPUs TP8/EP8, LR 1e-4"),
}

__all__ = ["LORA_TARGETS", "RECIPES", "RecipeInfo", *RECIPES]


def __getattr__(name: str) -> Any:
    if name in RECIPES:
        from importlib import import_module

        module, attr = RECIPES[name].target.split(":")
        return getattr(import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
