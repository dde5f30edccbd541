"""SuperModelProvider: Nemotron 3 Super as a Megatron-Bridge ``HybridModelProvider``.

Written as a diff against the host's plain Nemotron-H (``HybridModelProvider`` plus the settings
``NemotronHBridge.provider_bridge`` adds): every Super-specific setting carries an "unlike Nemotron-H"
comment. Shapes come from a :class:`SuperArchitecture` (defaults: the released 120B-A12B config,
packaged, so nothing touches the Hub). Every construction and every ``finalize()`` re-validates the
architecture and the parallel layout, so dotted overrides (``model.num_layers=7``) fail before a build.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from megatron.bridge.models.hybrid.hybrid_provider import HybridModelProvider
from megatron.core.activations import squared_relu
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.quantization.quant_config import RecipeConfig
from megatron.core.transformer.enums import AttnBackend

from nemotron3_super.architecture import SuperArchitecture, super_120b_a12b
from nemotron3_super.installed import default_attention_backend, default_gradient_accumulation_fusion
from nemotron3_super.layer_specs import SPEC_KINDS, local_layer_spec, resolve_spec_kind, te_layer_spec
from nemotron3_super.precision import BF16, FP8, FP8_SCALINGS, NVFP4, PRECISIONS, precision_plan, unsupported_reason


logger = logging.getLogger(__name__)

MTP_REPEATED_DEPTHS = 2  # Super trains its one MTP block at 2 depths (shared weights)
# provider field <- SuperArchitecture field (= HF config.json key)
ARCH_FIELDS: tuple[tuple[str, str], ...] = (
    ("hidden_size", "hidden_size"), ("hybrid_layer_pattern", "hybrid_override_pattern"),
    ("num_layers", "num_hidden_layers"), ("vocab_size", "vocab_size"),
    ("seq_length", "max_position_embeddings"), ("max_position_embeddings", "max_position_embeddings"),
    ("layernorm_epsilon", "layer_norm_epsilon"),
    ("fp32_residual_connection", "residual_in_fp32"),
    ("share_embeddings_and_output_weights", "tie_word_embeddings"),
    ("num_attention_heads", "num_attention_heads"), ("num_query_groups", "num_key_value_heads"),
    ("kv_channels", "head_dim"), ("mamba_num_heads", "mamba_num_heads"),
    ("mamba_head_dim", "mamba_head_dim"), ("mamba_state_dim", "ssm_state_size"),
    ("mamba_num_groups", "n_groups"), ("mamba_chunk_size", "chunk_size"),
    ("num_moe_experts", "n_routed_experts"), ("moe_router_topk", "num_experts_per_tok"),
    ("moe_ffn_hidden_size", "moe_intermediate_size"),
    ("moe_shared_expert_intermediate_size", "moe_shared_expert_intermediate_size"),
    ("moe_latent_size", "moe_latent_size"), ("moe_router_topk_scaling_factor", "routed_scaling_factor"),
    ("ffn_hidden_size", "intermediate_size"), ("add_bias_linear", "use_bias"),
    ("mtp_hybrid_override_pattern", "mtp_hybrid_override_pattern"),
)
# Config fields that need TE or apex kernels; the local spec turns them off (one INFO line).
LOCAL_SPEC_OFF = ("persist_layer_norm", "moe_permute_fusion", "masked_softmax_fusion",
                  "gradient_accumulation_fusion", "bias_activation_fusion", "apply_rope_fusion",
                  "cross_entropy_loss_fusion")


# megatron-core's LanguageModule exports NVTE_{FLASH,FUSED,UNFUSED}_ATTN for each model's attention backend
# and asserts that every later model in the process agrees, so a process that builds a TE-free model and
# then a TE one (conversion, compare, tests) stopped on the second. Before each build these variables go
# back to what the user had set when this module was imported: the user's own settings still meet
# megatron-core's check; only the values megatron-core exported for an earlier model are dropped.
_NVTE_ATTENTION_VARS = ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN")
_USER_NVTE_ATTENTION = {name: os.environ.get(name) for name in _NVTE_ATTENTION_VARS}


def _restore_user_attention_env() -> None:
    for name, value in _USER_NVTE_ATTENTION.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class PrecisionFallbackWarning(UserWarning):
    """The requested precision (nvfp4, fp8) cannot run here; the provider continues in BF16 (or in FP8
    when ``precision_fallback='fp8'`` and FP8 can run)."""


def _arch_kwargs(arch: SuperArchitecture) -> dict[str, Any]:
    out = {pf: getattr(arch, af) for pf, af in ARCH_FIELDS if getattr(arch, af) is not None}
    out["num_layers"] = arch.num_hidden_layers
    out["moe_latent_size"] = arch.moe_latent_size  # None (no latent MoE, Nano) must not keep Super's 1024
    n_mtp = arch.num_nextn_predict_layers
    out["mtp_hybrid_override_pattern"] = arch.mtp_hybrid_override_pattern or None
    out["mtp_use_repeated_layer"] = n_mtp == 1  # one released block, repeated
    out["mtp_num_layers"] = MTP_REPEATED_DEPTHS if n_mtp == 1 else n_mtp
    return out


def _super(name: str) -> Callable[[], Any]:
    """default_factory: the value ``name`` has for the packaged Super 120B-A12B config."""
    return lambda: _arch_kwargs(super_120b_a12b())[name]


def _expressible(arch: SuperArchitecture) -> None:
    """Reject configs that megatron-core's modules cannot represent (instead of building them wrong)."""
    kinds, bad = arch.layer_kinds, []
    if "M" in kinds:
        bad += [f"conv_kernel={arch.conv_kernel} (MambaMixer is built with d_conv=4)"] * (arch.conv_kernel != 4)
        bad += ["use_conv_bias=False (MambaMixer always has a conv bias)"] * (not arch.use_conv_bias)
        bad += ["use_bias=True (MambaMixer has no in/out_proj bias)"] * bool(arch.use_bias)
        bad += [f"mamba_hidden_act={arch.mamba_hidden_act!r} (MambaMixer uses silu)"] * (
            arch.mamba_hidden_act != "silu")
        bad += [f"layer_norm_epsilon={arch.layer_norm_epsilon} (MambaMixer's gated norm uses 1e-5)"] * (
            arch.layer_norm_epsilon != 1e-5)
    if kinds & {"E", "-"} and arch.mlp_hidden_act != "relu2":
        bad.append(f"mlp_hidden_act={arch.mlp_hidden_act!r} (this provider builds relu2 MLPs)")
    if "E" in kinds:
        bad += ["norm_topk_prob=False (megatron renormalises sigmoid top-k scores)"] * (not arch.norm_topk_prob)
        bad += [f"n_group={arch.n_group}, topk_group={arch.topk_group} (group-limited routing "
                "differs between HF and megatron-core)"] * (arch.n_group != 1 or arch.topk_group != 1)
    if bad:
        raise ValueError("SuperModelProvider: config not representable in megatron-core: " + "; ".join(bad))


@dataclass
class SuperModelProvider(HybridModelProvider):
    """Nemotron 3 Super (hybrid Mamba-2 + attention + LatentMoE + MTP) for megatron-core's HybridModel."""

    # --- shapes: defaults are Super 120B-A12B (packaged config.json); from_architecture sets any other ---
    hidden_size: int = field(default_factory=_super("hidden_size"))  # 4096
    # unlike Nemotron-H (M, *, - layers): 88 = 40 Mamba-2 + 40 latent-MoE + 8 attention, no dense MLP
    hybrid_layer_pattern: str | None = field(default_factory=_super("hybrid_layer_pattern"))
    num_layers: int | None = field(default_factory=_super("num_layers"))  # 88, must match the pattern
    vocab_size: int | None = field(default_factory=_super("vocab_size"))  # 131072 tokens, unpadded
    seq_length: int = field(default_factory=_super("seq_length"))  # training length (recipes: 4096-8192 tokens)
    # the model's context (262144 tokens in config.json); kept apart from seq_length so a recipe's training
    # length never leaks into an exported config.json
    max_position_embeddings: int = field(default_factory=_super("max_position_embeddings"))
    layernorm_epsilon: float = field(default_factory=_super("layernorm_epsilon"))  # 1e-5
    fp32_residual_connection: bool = field(default_factory=_super("fp32_residual_connection"))  # False
    num_attention_heads: int = field(default_factory=_super("num_attention_heads"))  # 32 query heads
    num_query_groups: int | None = field(default_factory=_super("num_query_groups"))  # 2 KV heads (GQA 16:1)
    kv_channels: int | None = field(default_factory=_super("kv_channels"))  # head_dim 128
    mamba_num_heads: int | None = field(default_factory=_super("mamba_num_heads"))  # 128 heads...
    mamba_head_dim: int = field(default_factory=_super("mamba_head_dim"))  # ...x 64 = d_inner 8192
    mamba_state_dim: int = field(default_factory=_super("mamba_state_dim"))  # SSM state 128
    mamba_num_groups: int = field(default_factory=_super("mamba_num_groups"))  # 8 B/C groups
    mamba_chunk_size: int = field(default_factory=_super("mamba_chunk_size"))  # SSD scan chunk 128 tokens
    ffn_hidden_size: int | None = field(default_factory=_super("ffn_hidden_size"))  # dense '-' MLP (unused)
    # unlike Nemotron-H (dense MLPs): 512 routed experts per MoE layer, 22 chosen per token
    num_moe_experts: int | None = field(default_factory=_super("num_moe_experts"))
    moe_router_topk: int = field(default_factory=_super("moe_router_topk"))
    moe_ffn_hidden_size: int | None = field(default_factory=_super("moe_ffn_hidden_size"))  # 2688 per expert
    # unlike Nemotron-H: one shared expert, 5376 wide, in the full 4096 hidden space
    moe_shared_expert_intermediate_size: int | None = field(
        default_factory=_super("moe_shared_expert_intermediate_size"))
    # unlike Nemotron-H: LatentMoE, routed experts work in 1024 dims (fc1/fc2_latent_proj: 4096 <-> 1024)
    moe_latent_size: int | None = field(default_factory=_super("moe_latent_size"))
    # unlike Nemotron-H (none): chosen sigmoid scores are renormalised to sum 1 (megatron always does this
    # for sigmoid top-k > 1, = HF norm_topk_prob) and then multiplied by routed_scaling_factor 5.0
    moe_router_topk_scaling_factor: float | None = field(default_factory=_super("moe_router_topk_scaling_factor"))

    # --- router, experts, embeddings ---
    moe_router_score_function: str = "sigmoid"  # unlike the host's default (softmax): per-expert sigmoid
    moe_router_enable_expert_bias: bool = True  # unlike the host's default: aux-loss-free bias, FP32 [512]
    moe_router_dtype: str | None = "fp32"  # unlike the host's default (param dtype): routing math in FP32
    moe_router_load_balancing_type: str = "seq_aux_loss"  # as the host's Nemotron-H bridge
    moe_aux_loss_coeff: float = 1e-4  # published load-balancing loss weight (as the Nemotron-H bridge)
    moe_router_bias_update_rate: float = 1e-3  # published expert-bias update per step
    moe_token_dispatcher_type: str = "alltoall"
    # routed experts as grouped GEMMs: TE's GroupedLinear (TE spec, always) or our GroupedMLP (local spec);
    # False: the local spec runs megatron-core's SequentialMLP (one GEMM pair per expert) instead
    moe_grouped_gemm: bool = True
    moe_permute_fusion: bool = True
    # unlike the host's Nemotron-H bridge (True): megatron-core refuses it with latent MoE in training
    moe_shared_expert_overlap: bool = False
    activation_func: Callable = squared_relu  # as Nemotron-H's relu2 MLP, now also in experts: relu(x)^2
    gated_linear_unit: bool = False  # unlike SwiGLU MoEs: experts/shared expert are up->relu2->down, no gate
    bias_activation_fusion: bool = False  # megatron-core fuses only gelu/silu, not relu2
    add_bias_linear: bool = False  # no biases anywhere
    normalization: str = "RMSNorm"
    is_hybrid_model: bool = True  # as Nemotron-H: output-layer init scaled for a hybrid stack
    position_embedding_type: Literal["learned_absolute", "rope", "none"] = "none"  # as Nemotron-H: NoPE
    share_embeddings_and_output_weights: bool = False  # as Nemotron-H: untied [131072, 4096] lm_head
    apply_query_key_layer_scaling: bool = False  # as the host's Nemotron-H bridge
    attention_softmax_in_fp32: bool = False  # as the host's Nemotron-H bridge
    persist_layer_norm: bool = True  # TE spec (local spec: off)
    masked_softmax_fusion: bool = True  # TE spec (local spec: off)
    # unlike the host (TE present -> True): the LM head is a ColumnParallelLinear in every spec and needs
    # Apex's fused wgrad kernel, so on only when Apex has it (installed.py)
    gradient_accumulation_fusion: bool = field(default_factory=default_gradient_accumulation_fusion)
    # unlike the host's Nemotron-H (flash): flash only when flash-attn is installed, else TE's auto choice
    attention_backend: AttnBackend = field(default_factory=default_attention_backend)

    # --- multi-token prediction ---
    # unlike Nemotron-H (no MTP): one "*E" block (attention + latent MoE) on top of the backbone
    mtp_hybrid_override_pattern: str | None = field(default_factory=_super("mtp_hybrid_override_pattern"))
    mtp_num_layers: int | None = MTP_REPEATED_DEPTHS  # unlike Nemotron-H (0): 2 depths (tokens t+2, t+3)...
    mtp_use_repeated_layer: bool = True  # ...of the SAME block: weights shared, stored and counted once
    mtp_loss_scaling_factor: float = 0.3  # unlike megatron's 0.1: MTP loss = 0.3 x mean over the 2 depths
    keep_mtp_spec_in_bf16: bool = True  # unlike Nemotron-H: the MTP block is never quantized

    # --- this provider's own knobs ---
    spec_impl: Literal["auto", "te", "local"] = "auto"  # layer spec: TE when usable, else TE-free local
    precision: Literal["bf16", "nvfp4", "fp8"] = "bf16"  # nvfp4: the published recipe (Blackwell); fp8: Hopper
    fp8_scaling: Literal["current", "delayed", "blockwise"] = "current"  # TE scaling for precision="fp8"
    allow_precision_fallback: bool = True  # nvfp4/fp8 where they cannot run: warn + fall back (False: raise)
    # what nvfp4 falls back to: bf16 (default), or the FP8 plan where FP8 runs (Hopper with TE)
    precision_fallback: Literal["bf16", "fp8"] = "bf16"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_architecture(cls, arch: SuperArchitecture, **overrides: Any) -> SuperModelProvider:
        """Provider for ``arch``; ``overrides`` (provider fields) are applied, then validated."""
        _expressible(arch)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"SuperModelProvider has no field(s) {unknown}")
        return cls(**{**_arch_kwargs(arch), **overrides})

    def set_architecture(self, arch: SuperArchitecture) -> None:
        """Give this provider ``arch``'s shape in place; parallel layout, precision and training settings
        stay (fine-tuning a checkpoint whose shape the recipe does not know)."""
        _expressible(arch)
        for name, value in _arch_kwargs(arch).items():
            if name != "seq_length":  # the run's sequence length, not the checkpoint's position limit
                setattr(self, name, value)
        self.hybrid_override_pattern = None  # the HF spelling would win over hybrid_layer_pattern

    @classmethod
    def from_hf_config(cls, cfg_or_path: Mapping[str, Any] | str | Path | object,
                       **overrides: Any) -> SuperModelProvider:
        """From a config.json dict, a folder or config.json path, or a transformers config (no Hub)."""
        if isinstance(cfg_or_path, (str, Path)):
            path = Path(cfg_or_path)
            arch = SuperArchitecture.from_json_file(path / "config.json" if path.is_dir() else path)
        else:
            arch = SuperArchitecture.from_hf_config(cfg_or_path)
        return cls.from_architecture(arch, **overrides)

    # ------------------------------------------------------------------ validation
    def main_pattern(self) -> str:
        """Backbone pattern without MTP parts ('/...') and pipeline separators ('|')."""
        return (self.hybrid_layer_pattern or "").split("/")[0].replace("|", "")

    def to_architecture(self) -> SuperArchitecture:
        """The architecture these fields describe (HF names); raises ValueError when invalid."""
        repeated = self.mtp_use_repeated_layer and (self.mtp_num_layers or 0) > 0
        n_mtp = (1 if repeated else self.mtp_num_layers or 0) if self.mtp_hybrid_override_pattern else 0
        values = {af: getattr(self, pf) for pf, af in ARCH_FIELDS if pf not in ("num_layers",)}
        values.update(hybrid_override_pattern=self.main_pattern(), num_nextn_predict_layers=n_mtp,
                      mtp_hybrid_override_pattern=(self.mtp_hybrid_override_pattern or "") if n_mtp else "",
                      attention_bias=False, conv_kernel=4, use_conv_bias=True, mamba_hidden_act="silu",
                      n_shared_experts=1, n_group=1, topk_group=1, norm_topk_prob=True,
                      mlp_hidden_act="relu2", mlp_bias=self.add_bias_linear)
        try:
            return SuperArchitecture(**values)
        except ValueError as exc:
            raise ValueError(f"SuperModelProvider: {exc}") from exc

    def validate(self) -> SuperArchitecture:
        """Check fields changed after construction (dotted overrides) before anything is built."""
        return self._validate()

    def _validate(self) -> SuperArchitecture:
        if self.hybrid_override_pattern is not None:  # unlike the host: the HF spelling simply wins
            self.hybrid_layer_pattern, self.hybrid_override_pattern = self.hybrid_override_pattern, None
        if self.mtp_num_layers == 0 and self.mtp_hybrid_override_pattern:  # MTP switched off
            self.mtp_hybrid_override_pattern, self.mtp_use_repeated_layer = None, False
        arch = self.to_architecture()
        if self.num_layers is not None and self.num_layers != arch.num_hidden_layers:
            raise ValueError(f"SuperModelProvider: hybrid pattern {arch.hybrid_override_pattern!r} has "
                             f"{arch.num_hidden_layers} layers but num_layers={self.num_layers}: "
                             "expected them to agree")
        ep = self.expert_model_parallel_size or 1
        etp = self.expert_tensor_parallel_size or (1 if ep > 1 else self.tensor_model_parallel_size)
        try:
            arch.validate_parallelism(self.tensor_model_parallel_size, ep, self.pipeline_model_parallel_size, etp)
        except ValueError as exc:
            raise ValueError(f"SuperModelProvider: {exc}") from exc
        if self.spec_impl not in SPEC_KINDS:
            raise ValueError(f"SuperModelProvider: spec_impl={self.spec_impl!r}: expected one of {SPEC_KINDS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"SuperModelProvider: precision={self.precision!r}: expected one of {PRECISIONS}")
        if self.fp8_scaling not in FP8_SCALINGS:
            raise ValueError(f"SuperModelProvider: fp8_scaling={self.fp8_scaling!r}: expected one of "
                             f"{tuple(FP8_SCALINGS)}")
        if self.precision_fallback not in (BF16, FP8):
            raise ValueError(f"SuperModelProvider: precision_fallback={self.precision_fallback!r}: expected "
                             "'bf16' or 'fp8'")
        return arch

    # ------------------------------------------------------------------ finalize / provide
    def finalize(self) -> None:
        """Validate, pick the layer spec and precision, then run the host's finalize."""
        arch = self._validate()
        kind = resolve_spec_kind(self.spec_impl)
        ours = self.hybrid_stack_spec in (None, te_layer_spec, local_layer_spec)
        if ours and self.transformer_impl != "inference_optimized":  # that one: the host's inference spec
            self.hybrid_stack_spec = te_layer_spec if kind == "te" else local_layer_spec
        if self.hybrid_stack_spec is local_layer_spec:
            self._configure_local_spec()
        self._configure_precision(arch, local=self.hybrid_stack_spec is local_layer_spec)
        super().finalize()

    def _configure_local_spec(self) -> None:
        turned_off = [name for name in LOCAL_SPEC_OFF if getattr(self, name)]
        for name in turned_off:
            setattr(self, name, False)
        self.attention_backend = AttnBackend.local
        self.transformer_impl = "local"  # megatron-core's name for "no TE modules"
        if turned_off:
            logger.info("local layer spec: turned off %s (they need Transformer Engine or apex)",
                        ", ".join(turned_off))

    def _configure_precision(self, arch: SuperArchitecture, *, local: bool) -> None:
        """Set the fp4/fp8 fields of the requested plan, or fall back (warning) where it cannot run."""
        if self.precision == BF16:
            return
        wanted, reason = self.precision, self._precision_problem(self.precision, local)
        if reason:
            fallback = BF16
            if wanted == NVFP4 and self.precision_fallback == FP8 and not self._precision_problem(FP8, local):
                fallback = FP8
            hint = ("" if wanted != NVFP4 or fallback == FP8 else
                    " On Hopper with Transformer Engine, precision_fallback='fp8' runs the FP8 plan instead.")
            msg = (f"precision={wanted!r} cannot run here: {reason}. Falling back to precision={fallback!r} "
                   f"(same model and per-layer BF16 exclusions; {'FP8' if fallback == FP8 else 'BF16'} "
                   f"GEMMs).{hint}")
            if not self.allow_precision_fallback:
                raise RuntimeError(f"SuperModelProvider: {msg} (allow_precision_fallback=False)")
            warnings.warn(msg, PrecisionFallbackWarning, stacklevel=3)
            self.precision = fallback
            if fallback == BF16:
                return
        fields = precision_plan(arch, self.precision, fp8_scaling=self.fp8_scaling).megatron_fields()
        fields["quant_recipe"] = RecipeConfig.from_config_dict(fields["quant_recipe"])
        for name, value in fields.items():
            setattr(self, name, value)

    def _precision_problem(self, precision: str, local: bool) -> str | None:
        reason = unsupported_reason(precision, self.fp8_scaling)
        if reason is None and local:
            reason = f"the layer spec is the TE-free 'local' one (no {precision.upper()} kernels)"
        return reason

    def provide(self, pre_process=None, post_process=None, vp_stage=None):
        """Build the HybridModel (call ``finalize()`` first). Without a process-group collection,
        megatron-core's global parallel_state groups are used."""
        self._validate()
        if self._pg_collection is None:
            self._pg_collection = ProcessGroupCollection.use_mpu_process_groups()
        _restore_user_attention_env()
        return super().provide(pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)


# ---------------------------------------------------------------------- named presets (plugin targets)
def super_120b_a12b_provider(**overrides: Any) -> SuperModelProvider:
    """The released Nemotron 3 Super 120B-A12B (packaged config; no Hub)."""
    return SuperModelProvider.from_architecture(super_120b_a12b(), **overrides)


def nano_30b_a3b_provider(**overrides: Any) -> SuperModelProvider:
    """Nemotron 3 Nano 30B-A3B: the same family without latent MoE and MTP."""
    from nemotron3_super.architecture import nano_30b_a3b

    return SuperModelProvider.from_architecture(nano_30b_a3b(), **overrides)


def tiny_super_provider(**overrides: Any) -> SuperModelProvider:
    """Tiny Super-shaped debug model (MEME*ME, MTP *E, latent MoE): builds on CPU in seconds."""
    from nemotron3_super.architecture import tiny_super

    return SuperModelProvider.from_architecture(tiny_super(), **overrides)
