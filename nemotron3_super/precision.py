"""Nemotron 3 Super's published NVFP4 pretraining recipe as data (stdlib only, testable on CPU).

The recipe (Super technical report; FACTS.md "Training facts"): NVFP4 GEMMs on Blackwell, except
  * the last 14 backbone layers: BF16 (other depths: the same 14/88 fraction),
  * latent projections (fc1/fc2_latent_proj), attention QKV and output projections: BF16,
  * the MTP block, embeddings and LM head: BF16,
  * Mamba out_proj: MXFP8.
Non-GEMM tensors (norms, conv1d, SSM parameters, router) are never quantized; routing runs in FP32.

:func:`precision_plan` answers "which precision does module X run in" for any Megatron module path;
:meth:`PrecisionPlan.megatron_fields` maps the plan onto megatron-core 0.19 ``TransformerConfig``
fields: ``fp4``/``fp4_recipe``/``fp4_param`` for the NVFP4 default, ``first_last_layers_bf16`` +
``num_layers_at_start_in_bf16``/``num_layers_at_end_in_bf16`` for whole BF16 layers (megatron-core has
no ``fp4_layers`` list), and ``quant_recipe`` (per-module TE overrides, glob-matched on module paths)
for the BF16 / MXFP8 modules inside NVFP4 layers. NVFP4 needs Transformer Engine and compute capability
10.x (B200/GB200/B300/GB300); elsewhere :func:`nvfp4_unsupported_reason` says why, and the provider
falls back to BF16 with a warning.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemotron3_super.architecture import SuperArchitecture

BF16, NVFP4, MXFP8 = "bf16", "nvfp4", "mxfp8"
PRECISIONS = (BF16, NVFP4)
NVFP4_BF16_LAST_LAYERS, SUPER_LAYERS = 14, 88  # published: the last 14 of 88 layers stay BF16
NVFP4_COMPUTE_CAPABILITY_MAJOR = 10  # Blackwell data-center parts (sm_100 / sm_103)

# Overrides inside NVFP4 layers, first match wins; glob on Megatron module paths (both specs).
NVFP4_MODULE_RULES: tuple[tuple[str, str], ...] = (
    ("mtp.*", BF16),  # MTP block (eh_proj, its attention and latent MoE)
    ("embedding*", BF16),
    ("output_layer*", BF16),  # LM head
    ("*.fc1_latent_proj", BF16),
    ("*.fc2_latent_proj", BF16),
    ("*.self_attention.linear_qkv", BF16),
    ("*.self_attention.linear_proj", BF16),
    ("*.mixer.out_proj", MXFP8),  # Mamba output projection
)
# GEMM modules that run NVFP4 unless a rule above says otherwise (Mamba in_proj, expert/shared/dense MLP).
_NVFP4_GEMMS = ("*.mixer.in_proj", "*.linear_fc1", "*.linear_fc2")
_LAYER_INDEX = re.compile(r"^decoder\.layers\.(\d+)\.")
_TE_KEY = "transformer_engine_config_type"  # megatron.core.extensions.transformer_engine


@dataclass(frozen=True)
class PrecisionPlan:
    """Which precision each backbone layer and each module runs in."""

    precision: str  # "bf16" or "nvfp4"
    layer_precision: tuple[str, ...]  # per backbone layer, by global index
    module_rules: tuple[tuple[str, str], ...] = ()
    bf16_last_layers: int = 0

    def module_precision(self, module_path: str) -> str:
        """Precision of the module at ``module_path`` (a Megatron module name such as
        ``decoder.layers.3.mixer.out_proj``; layer indices are global, PP=1 names)."""
        if self.precision == BF16:
            return BF16
        for pattern, precision in self.module_rules:
            if fnmatch.fnmatchcase(module_path, pattern):
                return precision if precision == BF16 or self._layer(module_path) != BF16 else BF16
        if not any(fnmatch.fnmatchcase(module_path, g) for g in _NVFP4_GEMMS):
            return BF16  # norms, conv1d, SSM parameters, router: never quantized
        return self._layer(module_path)

    def _layer(self, module_path: str) -> str:
        match = _LAYER_INDEX.match(module_path)
        return self.layer_precision[int(match.group(1))] if match else BF16

    def summary(self) -> dict[str, int]:
        """Layer counts per precision, e.g. {"nvfp4": 74, "bf16": 14}."""
        return {p: self.layer_precision.count(p) for p in dict.fromkeys(self.layer_precision)}

    def quant_recipe_dict(self) -> dict[str, Any] | None:
        """megatron-core ``RecipeConfig.from_config_dict`` input for the per-module overrides."""
        if self.precision == BF16:
            return None
        te = {_TE_KEY: "TEQuantizationParams"}
        configs = {BF16: {**te, "training_recipe": {}},  # no recipe = TE autocast off (BF16)
                   MXFP8: {**te, "training_recipe": {"fp8_quantization_recipe": "mxfp8",
                                                     "fp8_format": "e4m3"}}}
        matchers = {f"{i:02d}_{precision}": {"type": "glob", "pattern": pattern, "config": precision,
                                             "enabled": True}
                    for i, (pattern, precision) in enumerate(self.module_rules)}
        return {"configs": configs, "matchers": matchers}

    def megatron_fields(self) -> dict[str, Any]:
        """TransformerConfig fields for this plan (``quant_recipe`` as a dict; see RecipeConfig)."""
        if self.precision == BF16:
            return {"fp4": None, "fp8": None, "quant_recipe": None}
        return {
            "fp4": "e2m1",  # NVFP4 = E2M1 values, FP8 block scales
            "fp4_recipe": "nvfp4",
            "fp4_param": False,  # BF16 master/param copies (FP4 primary weights unsupported by FSDP buffers)
            "fp8": None,
            "first_last_layers_bf16": True,
            "num_layers_at_start_in_bf16": 0,  # TransformerConfig's default is 1: the recipe keeps 0
            "num_layers_at_end_in_bf16": self.bf16_last_layers,
            "quant_recipe": self.quant_recipe_dict(),
        }


def default_bf16_last_layers(num_layers: int) -> int:
    """14 for Super's 88 layers; other depths (debug runs) keep the same 14/88 fraction, at least 1."""
    return max(1, round(num_layers * NVFP4_BF16_LAST_LAYERS / SUPER_LAYERS))


def precision_plan(arch: SuperArchitecture, precision: str = BF16, *,
                   bf16_last_layers: int | None = None) -> PrecisionPlan:
    """The plan for ``arch`` in ``precision`` ("bf16" or "nvfp4")."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    n = arch.num_hidden_layers
    if precision == BF16:
        return PrecisionPlan(BF16, (BF16,) * n)
    if bf16_last_layers is None:
        bf16_last_layers = default_bf16_last_layers(n)
    if not 0 <= bf16_last_layers <= n:
        raise ValueError(f"bf16_last_layers={bf16_last_layers}: expected 0..{n} (num layers)")
    layers = (NVFP4,) * (n - bf16_last_layers) + (BF16,) * bf16_last_layers
    return PrecisionPlan(NVFP4, layers, NVFP4_MODULE_RULES, bf16_last_layers)


def describe_gpu() -> str:
    """'NVIDIA B200 (compute capability 10.0)' or 'no CUDA GPU' (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"


def nvfp4_unsupported_reason() -> str | None:
    """Why NVFP4 cannot run on this machine, or None when it can (TE + compute capability 10.x)."""
    import torch

    from nemotron3_super.host_compat import have_transformer_engine

    problems = []
    if torch.cuda.is_available():
        if torch.cuda.get_device_capability()[0] != NVFP4_COMPUTE_CAPABILITY_MAJOR:
            problems.append(f"the GPU is {describe_gpu()}, not Blackwell (compute capability 10.x)")
    else:
        problems.append("there is no CUDA GPU (NVFP4 needs a Blackwell GPU, compute capability 10.x)")
    if not have_transformer_engine():
        problems.append("Transformer Engine is not installed (NVFP4 GEMMs are TE kernels)")
    return "; ".join(problems) or None
