"""Layer specs for megatron-core's HybridModel with Nemotron 3 Super's blocks.

Two specs, one model:

* ``"te"``: megatron-core's own Transformer Engine hybrid stack spec (fused norm+linear, TE attention,
  grouped-GEMM experts, TE latent projections and final norm). Production.
* ``"local"``: megatron-core's local modules only (torch RMSNorm, Column/RowParallelLinear, local
  DotProductAttention, MambaMixer with local in/out projections) and routed experts as one grouped GEMM
  per projection (:class:`~nemotron3_super.grouped_experts.GroupedMLP`; ``moe_grouped_gemm=False``:
  megatron-core's per-expert ``SequentialMLP``). Runs where TE
  does not (CPU conversion boxes, GPU machines without TE). Parameter names differ from the TE spec
  (``decoder.layers.N.norm.weight`` instead of ``mixer.in_proj.layer_norm_weight``, ...).

megatron-core 0.19 builds two Super modules from TE whatever the spec says: the hybrid stack's final
norm (``HybridStack.__init__`` calls ``TENorm``) and the MoE latent projections (``MoELayer.__init__``
asserts ``HAVE_TE`` and calls ``TELinear``). Neither has a spec hook, so this file subclasses the owning
modules (:class:`SuperHybridStack`, :class:`LatentMoELayer`) and adds the hook to their submodules
dataclasses (``final_norm``, ``latent_proj``); the local spec fills the hooks with local modules.
Nothing in megatron-core is patched.
"""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from megatron.core.extensions.transformer_engine import HAVE_TE
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.hybrid.hybrid_block import HybridStack, HybridStackSubmodules
from megatron.core.models.hybrid.hybrid_layer_specs import hybrid_stack_spec as _mcore_te_stack_spec
from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
from megatron.core.ssm.mlp_layer import MLPLayer
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, get_data_parallel_rng_tracker_name
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.moe.moe_layer import BaseMoELayer, MoELayer, MoESubmodules
from megatron.core.transformer.moe.moe_utils import MoECudaGraphTensorStore, get_default_pg_collection
from megatron.core.transformer.moe.shared_experts import SharedExpertMLP
from megatron.core.transformer.moe.token_dispatcher import (
    MoEAllGatherTokenDispatcher,
    MoEAlltoAllTokenDispatcher,
    MoEFlexTokenDispatcher,
)
from megatron.core.transformer.multi_token_prediction import (
    MultiTokenPredictionBlock,
    MultiTokenPredictionBlockSubmodules,
    MultiTokenPredictionLayer,
    MultiTokenPredictionLayerSubmodules,
)
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_layer import (
    MoETransformerLayer,
    TransformerLayer,
    TransformerLayerSubmodules,
)
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint
from megatron.core.utils import get_tensor_model_parallel_group_if_none

from nemotron3_super.grouped_experts import GroupedMLP

logger = logging.getLogger(__name__)

SpecKind = Literal["auto", "te", "local"]
SPEC_KINDS = ("auto", "te", "local")


# ---------------------------------------------------------------------- local modules and spec hooks
class NoExtraState:
    """TE modules checkpoint an ``_extra_state`` (their FP8 metadata) beside their weights; the local stand-ins
    store None under the same key (as megatron-core's ColumnParallelLinear does), so one torch_dist checkpoint
    has the same keys whichever spec wrote it. TE's metadata means nothing without TE: it is ignored on load."""

    def get_extra_state(self) -> None:
        return None

    def set_extra_state(self, state: object) -> None:
        """Nothing to restore (an FP8 scaling history from a TE-written checkpoint is dropped)."""


class LocalRMSNorm(NoExtraState, torch.nn.RMSNorm):
    """torch RMSNorm with TENorm's checkpoint keys."""


class LocalLayerNorm(NoExtraState, torch.nn.LayerNorm):
    """torch LayerNorm with TENorm's checkpoint keys."""


class LocalNorm:
    """torch RMSNorm/LayerNorm as megatron-core's ``WrappedTorchNorm`` builds it, plus what that one
    lacks for training: weights in ``params_dtype`` on the build device (as TENorm), and marked
    ``sequence_parallel`` so megatron's grad finalisation all-reduces them across TP under SP (as
    apex's FusedLayerNorm does). WrappedTorchNorm refuses sequence parallelism; MoE at TP > 1 needs it.
    Stands for a TENorm (which checkpoints an ``_extra_state``)."""

    extra_state = True

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **_unused) -> torch.nn.Module:
        if config.normalization not in ("RMSNorm", "LayerNorm") or config.layernorm_zero_centered_gamma:
            raise ValueError(f"local spec supports RMSNorm/LayerNorm without zero-centered gamma, got "
                             f"normalization={config.normalization!r}")
        if cls.extra_state:
            norm_cls = LocalRMSNorm if config.normalization == "RMSNorm" else LocalLayerNorm
        else:
            norm_cls = torch.nn.RMSNorm if config.normalization == "RMSNorm" else torch.nn.LayerNorm
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        norm = norm_cls(hidden_size, eps=eps, device=device, dtype=config.params_dtype)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


class LocalPreNorm(LocalNorm):
    """A pre-norm that the TE spec fuses into the next linear (Mamba ``in_proj``, attention ``linear_qkv``,
    a dense MLP's ``linear_fc1``): its weight is stored under that linear's ``layer_norm_weight`` key (see
    ``*_NORM_KEYS`` below) and, as there, with no ``_extra_state`` of its own."""

    extra_state = False


class LocalDuplicatedLinear(NoExtraState, torch.nn.Module):
    """Local stand-in for ``TELinear(parallel_mode="duplicated")``: a full (not TP-split) weight
    replicated on every TP rank, marked exactly as TE marks it, so the gradient all-reduce and the
    checkpoint treat it the same. Same parameter names (``weight``, ``bias``) as the TE module.
    ``tp_group`` names the ranks holding replicas; it only feeds the checkpoint's replica metadata."""

    def __init__(self, input_size: int, output_size: int, *, parallel_mode: str | None, config,
                 init_method, bias: bool, skip_bias_add: bool, skip_weight_param_allocation: bool = False,
                 is_expert: bool = False, tp_comm_buffer_name: str | None = None, tp_group=None,
                 name: str | None = None, **_unused) -> None:
        super().__init__()
        if parallel_mode != "duplicated" or is_expert or skip_weight_param_allocation:
            raise ValueError("LocalDuplicatedLinear supports only parallel_mode='duplicated', "
                             "is_expert=False and allocated weights")
        if config.delay_wgrad_compute:
            raise ValueError("delay_wgrad_compute needs Transformer Engine linears; use the 'te' spec")
        self.config, self.skip_bias_add = config, skip_bias_add
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(
            torch.empty(output_size, input_size, device=device, dtype=config.params_dtype))
        self.bias = (torch.nn.Parameter(torch.zeros(output_size, device=device, dtype=config.params_dtype))
                     if bias else None)
        if config.perform_initialization:
            if config.use_cpu_initialization:
                init_method(self.weight)
            else:  # same draw on every TP rank, as TE's duplicated linear
                with get_cuda_rng_tracker().fork(get_data_parallel_rng_tracker_name()):
                    init_method(self.weight)
        for param in self.parameters():
            param.allreduce = True  # data-parallel reduce
            param.sequence_parallel = config.sequence_parallel  # TP reduce when tokens are split
            param.tensor_model_parallel = False
        self._tp_group = tp_group  # the ranks holding replicas (checkpoint metadata only)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.skip_bias_add:
            return F.linear(x, self.weight), self.bias
        return F.linear(x, self.weight, self.bias), None

    def backward_dw(self) -> None:
        """Weight gradients are never delayed here (delay_wgrad_compute is refused at init)."""

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """Replicated across TP and DP, like TELinear in duplicated mode."""
        state_dict = self.state_dict(prefix="", keep_vars=True)
        tp_group = get_tensor_model_parallel_group_if_none(self._tp_group, is_expert=False)
        return make_sharded_tensors_for_checkpoint(state_dict, prefix, None, sharded_offsets,
                                                   tp_group=tp_group,
                                                   dp_cp_group=(metadata or {}).get("dp_cp_group"))


@dataclass
class LatentMoESubmodules(MoESubmodules):
    """MoESubmodules plus the latent projection module megatron-core hard-codes to TELinear."""

    latent_proj: type = LocalDuplicatedLinear


class LatentMoELayer(MoELayer):
    """MoELayer whose ``fc1_latent_proj`` / ``fc2_latent_proj`` come from ``submodules.latent_proj``.

    Without a latent size it is MoELayer. With one, ``__init__`` repeats megatron-core 0.19.2's
    ``MoELayer.__init__`` training path step by step, with the TE-only latent linears swapped for the
    spec's module (an integration test pins the attribute set against MoELayer's, to catch drift).
    """

    def __init__(self, config, submodules: LatentMoESubmodules | None = None, layer_number: int | None = None,
                 pg_collection=None, is_mtp_layer: bool = False, name: str | None = None) -> None:
        if not config.moe_latent_size:
            super().__init__(config, submodules, layer_number, pg_collection, is_mtp_layer, name)
            return
        if config.transformer_impl == "inference_optimized":
            raise ValueError("LatentMoELayer covers training/eval; inference_optimized needs the TE spec")
        self.submodules = submodules
        pg_collection = pg_collection if pg_collection is not None else get_default_pg_collection()
        BaseMoELayer.__init__(self, config=config, layer_number=layer_number,
                              pg_collection=pg_collection, is_mtp_layer=is_mtp_layer)
        selective = config.recompute_granularity == "selective"
        self.moe_layer_recompute = (selective and "moe" in config.recompute_modules
                                    and config.cuda_graph_impl != "local")
        self.shared_experts_recompute = selective and "shared_experts" in config.recompute_modules
        self.tp_group = pg_collection.tp
        self.router = submodules.router(config=config, pg_collection=pg_collection, is_mtp_layer=is_mtp_layer)
        h, latent = config.hidden_size, config.moe_latent_size

        def latent_proj(d_in: int, d_out: int, init, suffix: str) -> torch.nn.Module:
            return submodules.latent_proj(
                d_in, d_out, parallel_mode="duplicated", config=config, init_method=init,
                bias=config.add_bias_linear, skip_bias_add=False, skip_weight_param_allocation=False,
                is_expert=False, tp_group=pg_collection.tp,
                name=f"{name}.{suffix}" if name is not None else None)

        self.fc1_latent_proj = latent_proj(h, latent, config.init_method, "fc1_latent_proj")
        self.fc2_latent_proj = latent_proj(latent, h, config.output_layer_init_method, "fc2_latent_proj")
        self.token_dispatcher = token_dispatcher_class(config.moe_token_dispatcher_type)(
            self.num_local_experts, self.local_expert_indices, config=config, pg_collection=pg_collection)
        self.experts = submodules.experts(self.num_local_experts, config, pg_collection=pg_collection,
                                          name=f"{name}.experts" if name is not None else None)
        if self.use_shared_expert:
            self.shared_experts = submodules.shared_experts(
                config=config, pg_collection=pg_collection, gate=config.moe_shared_expert_gate,
                name=f"{name}.shared_experts" if name is not None else None)
            if self.shared_expert_overlap:
                self.token_dispatcher.set_shared_experts(self.shared_experts)
        self.cudagraph_tensor_store = MoECudaGraphTensorStore()
        self.fwd_execution_map = ["route", "expert_compute", "postprocess"]
        self.setup_delayed_wgrad_for_dispatch_backward_overlap()


def token_dispatcher_class(kind: str) -> type:
    """megatron-core's dispatcher for ``moe_token_dispatcher_type``. Without CUDA, "alltoall" (the
    provider's default, so a checkpoint's run_config.yaml rebuilds the same on a GPU) is served by the
    all-gather one: alltoall creates a CUDA stream when built; neither holds weights and both send each
    token to the same experts (only the communication pattern differs)."""
    dispatchers = {"allgather": MoEAllGatherTokenDispatcher, "alltoall": MoEAlltoAllTokenDispatcher,
                   "flex": MoEFlexTokenDispatcher}
    if kind not in dispatchers:
        raise ValueError(f"moe_token_dispatcher_type={kind!r}: expected one of {sorted(dispatchers)}")
    if kind == "alltoall" and not torch.cuda.is_available():
        return MoEAllGatherTokenDispatcher
    return dispatchers[kind]


@dataclass
class SuperHybridStackSubmodules(HybridStackSubmodules):
    """HybridStackSubmodules plus the final norm megatron-core hard-codes to TENorm (None: TENorm)."""

    final_norm: ModuleSpec | type | None = None


class SuperHybridStack(HybridStack):
    """HybridStack whose final norm comes from ``submodules.final_norm`` when the spec gives one."""

    def __init__(self, config, submodules: HybridStackSubmodules, *args, post_layer_norm: bool = True,
                 post_process: bool = True, **kwargs) -> None:
        final_norm = getattr(submodules, "final_norm", None)
        if final_norm is None:  # megatron-core's own TENorm
            super().__init__(config, submodules, *args, post_layer_norm=post_layer_norm,
                             post_process=post_process, **kwargs)
            return
        super().__init__(config, submodules, *args, post_layer_norm=False, post_process=post_process, **kwargs)
        self.post_layer_norm = post_layer_norm  # forward() reads it: norm applied as usual
        if post_process and post_layer_norm:
            self.final_norm = build_module(final_norm, config=config, hidden_size=config.hidden_size,
                                           eps=config.layernorm_epsilon)


class LocalMambaInProj(ColumnParallelLinear):
    """Mamba ``in_proj`` of the local spec: ColumnParallelLinear (same parameters and names) that also
    answers ``tp_size`` like TE's fused norm+linear. Megatron-Bridge's LoRA checkpointing reads
    ``in_proj.tp_size`` (``_compute_mamba_dim_info``) and failed on the plain class when saving a LoRA
    run without TE (found on the GPU machine)."""

    @property
    def tp_size(self) -> int:
        return self.tp_group.size()


# ---------------------------------------------------------------------- the two specs
# Checkpoint keys of the local spec's separate pre-norms, spelled as the TE spec's fused norm+linear
# modules store them, so one torch_dist checkpoint loads into either spec (megatron-core's own GPT local
# spec does the same). Only sharded checkpoint keys change; module and parameter names stay local.
MAMBA_NORM_KEYS = {"norm.": "mixer.in_proj.layer_norm_"}
ATTENTION_NORM_KEYS = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}
DENSE_MLP_NORM_KEYS = {"pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}


def te_layer_spec() -> ModuleSpec:
    """megatron-core's TE hybrid stack spec (a copy: callers may edit it, e.g. the Mamba chunk size)."""
    return copy.deepcopy(_mcore_te_stack_spec)


def local_layer_spec(config=None) -> ModuleSpec:
    """TE-free hybrid stack spec built from megatron-core's local modules. Routed experts: grouped GEMMs
    (:class:`GroupedMLP`) unless ``config.moe_grouped_gemm`` is False (then ``SequentialMLP``, one GEMM
    pair per expert). The host calls this with the provider as ``config``."""
    mlp = MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)
    grouped = config is None or bool(getattr(config, "moe_grouped_gemm", True))
    moe = functools.partial(LatentMoELayer, submodules=LatentMoESubmodules(
        experts=GroupedMLP if grouped else functools.partial(SequentialMLP, submodules=mlp),
        shared_experts=functools.partial(SharedExpertMLP, submodules=mlp),
        latent_proj=LocalDuplicatedLinear))
    mamba = ModuleSpec(module=MambaLayer, submodules=MambaLayerSubmodules(
        norm=LocalPreNorm,
        mixer=ModuleSpec(module=MambaMixer, submodules=MambaMixerSubmodules(
            in_proj=LocalMambaInProj, out_proj=RowParallelLinear)),
        mamba_bda=get_bias_dropout_add, sharded_state_dict_keys_map=dict(MAMBA_NORM_KEYS)))
    attention = ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=LocalPreNorm,
        self_attention=ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                                  submodules=SelfAttentionSubmodules(
                                      linear_qkv=ColumnParallelLinear, core_attention=DotProductAttention,
                                      linear_proj=RowParallelLinear)),
        self_attn_bda=get_bias_dropout_add, sharded_state_dict_keys_map=dict(ATTENTION_NORM_KEYS)))
    dense_mlp = ModuleSpec(module=MLPLayer, submodules=TransformerLayerSubmodules(
        pre_mlp_layernorm=LocalPreNorm, mlp=functools.partial(MLP.as_mlp_submodule, submodules=mlp),
        mlp_bda=get_bias_dropout_add, sharded_state_dict_keys_map=dict(DENSE_MLP_NORM_KEYS)))
    moe_layer = ModuleSpec(module=MoETransformerLayer, submodules=TransformerLayerSubmodules(
        pre_mlp_layernorm=LocalNorm, mlp=moe, mlp_bda=get_bias_dropout_add))
    mtp = ModuleSpec(module=MultiTokenPredictionBlock, submodules=MultiTokenPredictionBlockSubmodules(
        layer_specs=[ModuleSpec(module=MultiTokenPredictionLayer, submodules=MultiTokenPredictionLayerSubmodules(
            enorm=LocalNorm, hnorm=LocalNorm, eh_proj=ColumnParallelLinear,
            mtp_model_layer=None,  # built by HybridModel from the MTP pattern and the layer specs above
            layer_norm=LocalNorm))]))
    return ModuleSpec(module=SuperHybridStack, submodules=SuperHybridStackSubmodules(
        mamba_layer=mamba, attention_layer=attention, mlp_layer=dense_mlp, moe_layer=moe_layer,
        mtp_block_spec=mtp, final_norm=LocalNorm))


# ---------------------------------------------------------------------- selection
def te_unusable_reason() -> str | None:
    """Why the TE spec cannot be built here, or None when it can."""
    if not HAVE_TE:
        return "Transformer Engine is not installed"
    if not torch.cuda.is_available():
        return "Transformer Engine is installed but no CUDA GPU is visible (TE modules need one)"
    return None


def resolve_spec_kind(kind: str) -> Literal["te", "local"]:
    """Map "auto"/"te"/"local" to the spec that will be built; "te" without TE is an error."""
    if kind not in SPEC_KINDS:
        raise ValueError(f"layer spec kind {kind!r}: expected one of {', '.join(SPEC_KINDS)}")
    reason = te_unusable_reason()
    if kind == "te" and reason:
        raise RuntimeError(f"layer spec 'te' requested but {reason}. Install Transformer Engine "
                           "(`pip install nemotron3-super[te]`, needs CUDA) or ask for the 'local' spec.")
    if kind == "auto":
        if reason is None:
            return "te"
        logger.info("%s: using the TE-free local layer spec (megatron-core local modules)", reason)
        return "local"
    return kind  # type: ignore[return-value]


def select_layer_spec(kind: SpecKind = "auto") -> ModuleSpec:
    """The hybrid stack spec for ``kind``: "te", "local", or "auto" (TE when usable, else local)."""
    return te_layer_spec() if resolve_spec_kind(kind) == "te" else local_layer_spec()
