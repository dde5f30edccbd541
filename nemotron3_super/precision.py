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
falls back to BF16 with a warning (or, when asked, to the FP8 plan below).

FP8 (``precision="fp8"``) is the Hopper path: the same plan with FP8 instead of NVFP4 GEMMs and the same
BF16 exclusions (last 14/88 layers, latent projections, attention QKV/proj, MTP, embeddings, LM head);
Mamba out_proj runs FP8 too (MXFP8 is Blackwell-only). Three TE scalings: ``current`` (per-tensor current
scaling, megatron's "tensorwise"), ``delayed`` (amax history) and ``blockwise`` (1x128/128x128 blocks,
Hopper). FP8 needs Transformer Engine and compute capability 8.9 or newer (9.x for blockwise).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemotron3_super.architecture import SuperArchitecture

BF16, NVFP4, MXFP8, FP8 = "bf16", "nvfp4", "mxfp8", "fp8"
PRECISIONS = (BF16, NVFP4, FP8)
# FP8 scaling -> (TransformerConfig.fp8 format, TransformerConfig.fp8_recipe); "hybrid" = E4M3 forward,
# E5M2 gradients (TE's training default); blockwise scaling is defined for E4M3 only.
FP8_SCALINGS: dict[str, tuple[str, str]] = {
    "current": ("hybrid", "tensorwise"), "delayed": ("hybrid", "delayed"), "blockwise": ("e4m3", "blockwise")}
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)  # Ada / Hopper and newer have FP8 tensor cores
FP8_BLOCKWISE_MIN_COMPUTE_CAPABILITY = (9, 0)  # TE's Float8BlockScaling: Hopper and newer
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
# FP8: the same BF16 exclusions; Mamba out_proj stays in FP8 (its MXFP8 format exists only on Blackwell).
FP8_MODULE_RULES: tuple[tuple[str, str], ...] = tuple(r for r in NVFP4_MODULE_RULES if r[1] == BF16)
# GEMM modules that run NVFP4 (or FP8) unless a rule above says otherwise (Mamba in_proj, expert/shared/dense MLP).
_NVFP4_GEMMS = ("*.mixer.in_proj", "*.mixer.out_proj", "*.linear_fc1", "*.linear_fc2")
_LAYER_INDEX = re.compile(r"^decoder\.layers\.(\d+)\.")
_TE_KEY = "transformer_engine_config_type"  # megatron.core.extensions.transformer_engine


@dataclass(frozen=True)
class PrecisionPlan:
    """Which precision each backbone layer and each module runs in."""

    precision: str  # "bf16", "nvfp4" or "fp8"
    layer_precision: tuple[str, ...]  # per backbone layer, by global index
    module_rules: tuple[tuple[str, str], ...] = ()
    bf16_last_layers: int = 0
    fp8_scaling: str = "current"  # FP8 plans only: a key of FP8_SCALINGS

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
        configs = {BF16: {**te, "training_recipe": {}}}  # no recipe = TE autocast off (BF16)
        if any(p == MXFP8 for _, p in self.module_rules):
            configs[MXFP8] = {**te, "training_recipe": {"fp8_quantization_recipe": "mxfp8", "fp8_format": "e4m3"}}
        rules = list(self.module_rules)
        if self._bf16_layers_by_matcher():  # delayed scaling: whole BF16 layers as glob rules (see below)
            n = len(self.layer_precision)
            rules = [(f"decoder.layers.{i}.*", BF16) for i in range(n - self.bf16_last_layers, n)] + rules
        matchers = {f"{i:03d}_{precision}": {"type": "glob", "pattern": pattern, "config": precision,
                                             "enabled": True}
                    for i, (pattern, precision) in enumerate(rules)}
        return {"configs": configs, "matchers": matchers}

    def _bf16_layers_by_matcher(self) -> bool:
        """megatron-core refuses ``first_last_layers_bf16`` with delayed scaling ("Delayed scaling does
        not support first / last layer in BF16"), so that plan names the BF16 layers as module rules."""
        return self.precision == FP8 and self.fp8_scaling == "delayed" and self.bf16_last_layers > 0

    def megatron_fields(self) -> dict[str, Any]:
        """TransformerConfig fields for this plan (``quant_recipe`` as a dict; see RecipeConfig)."""
        if self.precision == BF16:
            return {"fp4": None, "fp8": None, "quant_recipe": None}
        if self.precision == FP8:
            fmt, recipe = FP8_SCALINGS[self.fp8_scaling]
            by_matcher = self._bf16_layers_by_matcher()
            return {
                "fp4": None,
                "fp8": fmt,
                "fp8_recipe": recipe,
                "fp8_param": False,  # BF16 master weights; FP8 copies only inside TE's GEMMs
                "first_last_layers_bf16": self.bf16_last_layers > 0 and not by_matcher,
                "num_layers_at_start_in_bf16": 0,
                "num_layers_at_end_in_bf16": 0 if by_matcher else self.bf16_last_layers,
                "quant_recipe": self.quant_recipe_dict(),
            }
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
                   bf16_last_layers: int | None = None, fp8_scaling: str = "current") -> PrecisionPlan:
    """The plan for ``arch`` in ``precision`` ("bf16", "nvfp4" or "fp8" with ``fp8_scaling``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if fp8_scaling not in FP8_SCALINGS:
        raise ValueError(f"fp8_scaling={fp8_scaling!r}: expected one of {', '.join(FP8_SCALINGS)}")
    n = arch.num_hidden_layers
    if precision == BF16:
        return PrecisionPlan(BF16, (BF16,) * n)
    if bf16_last_layers is None:
        bf16_last_layers = default_bf16_last_layers(n)
    if not 0 <= bf16_last_layers <= n:
        raise ValueError(f"bf16_last_layers={bf16_last_layers}: expected 0..{n} (num layers)")
    layers = (precision,) * (n - bf16_last_layers) + (BF16,) * bf16_last_layers
    rules = NVFP4_MODULE_RULES if precision == NVFP4 else FP8_MODULE_RULES
    return PrecisionPlan(precision, layers, rules, bf16_last_layers, fp8_scaling)


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


def fp8_unsupported_reason(scaling: str = "current") -> str | None:
    """Why the FP8 plan with ``scaling`` cannot run here, or None when it can (TE + compute capability
    8.9 or newer; 9.0 or newer for blockwise scaling)."""
    import torch

    from nemotron3_super.host_compat import have_transformer_engine

    need = FP8_BLOCKWISE_MIN_COMPUTE_CAPABILITY if scaling == "blockwise" else FP8_MIN_COMPUTE_CAPABILITY
    problems = []
    if not torch.cuda.is_available():
        problems.append("there is no CUDA GPU (FP8 needs compute capability %d.%d or newer)" % need)
    elif torch.cuda.get_device_capability() < need:
        problems.append(f"the GPU is {describe_gpu()}; FP8 {scaling} scaling needs compute capability "
                        f"{need[0]}.{need[1]} or newer")
    if not have_transformer_engine():
        problems.append("Transformer Engine is not installed (FP8 GEMMs are TE kernels)")
    return "; ".join(problems) or None


def unsupported_reason(precision: str, fp8_scaling: str = "current") -> str | None:
    """Why ``precision`` cannot run on this machine (None: it can; BF16 always can)."""
    if precision == NVFP4:
        return nvfp4_unsupported_reason()
    if precision == FP8:
        return fp8_unsupported_reason(fp8_scaling)
    return None
