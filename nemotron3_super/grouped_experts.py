"""Routed experts as two grouped GEMMs, without Transformer Engine (the TE-free spec's default).

megatron-core's TE-free expert module, ``SequentialMLP``, runs one small GEMM pair per expert in a Python
loop: Super's 512 experts per MoE layer become thousands of tiny kernel launches per step. PyTorch's
grouped GEMM (``torch.nn.functional.grouped_mm``, torch >= 2.10; ``torch._grouped_mm`` before) runs all of
a rank's experts in one launch, on CPU and on Hopper. megatron-core 0.19 uses it only for inference.

Weights are stored the way the kernel reads them, so a step never copies them into a stacked tensor:

    linear_fc1_weight  [local experts, ffn / expert-TP, in]    (rows of each expert: as linear_fc1.weight)
    linear_fc2_weight  [local experts, in, ffn / expert-TP]    (as linear_fc2.weight)

where ``in`` is the latent size under LatentMoE. ``weight.transpose(1, 2)`` is the kernel's right operand:
a view, no copy (grouped_mm accepts either stride order when every stride is a multiple of 16 bytes).

The distributed checkpoint holds the same global tensors as ``SequentialMLP``'s (``experts.experts.
linear_fc1.weight``, shape [experts, ffn, in]), so checkpoints load either way, at any EP/TP.
Token dispatch, probabilities and the activation follow ``SequentialMLP`` / ``MLP`` step for step.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, get_expert_parallel_rng_tracker_name
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group, make_sharded_object_for_checkpoint

logger = logging.getLogger(__name__)

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_ALIGN_BYTES = 16  # grouped_mm needs every non-unit stride a multiple of 16 bytes


def grouped_mm_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether one grouped_mm call can compute ``x @ weight[e].T`` per group (else: a per-expert loop).
    Strides of ``x`` [T, K], the transposed weight view [E, K, N] and the output [T, N] must be 16-byte
    multiples: K and N multiples of 8 in bf16, of 4 in fp32 (all of Super's sizes are)."""
    size = x.element_size()
    k, n = weight.shape[2], weight.shape[1]
    return (_GROUPED_MM is not None and x.dtype == weight.dtype and (k * size) % _ALIGN_BYTES == 0
            and (n * size) % _ALIGN_BYTES == 0 and x.data_ptr() % _ALIGN_BYTES == 0)


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, counts: list[int] | None
                   ) -> torch.Tensor:
    """Rows of ``x`` [T, K] in expert-sorted groups (``offsets``: int32 cumulative ends, [E]) times each
    group's ``weight[e].T`` ([E, N, K] stored): [T, N]. Experts with zero rows get zero gradient.
    ``counts`` (host ints) is needed only where the loop fallback runs."""
    x = x.contiguous()
    if grouped_mm_usable(x, weight):
        return _GROUPED_MM(x, weight.transpose(1, 2), offs=offsets)
    if counts is None:
        counts = torch.diff(offsets, prepend=offsets.new_zeros(1)).tolist()
    return torch.cat([part @ w.t() for part, w in zip(torch.split(x, counts), weight)]) if len(counts) else \
        x.new_zeros(x.shape[0], weight.shape[1])


class GroupedMLP(MegatronModule):
    """Non-gated expert MLPs (``fc2(act(fc1(x)) * prob)``) of one rank as two grouped GEMMs.

    Drop-in for ``SequentialMLP`` in ``MoELayer``: same constructor arguments, same ``forward``
    (tokens sorted by local expert, per-expert counts, per-token probabilities), same numbers to
    rounding, same checkpoint tensors. Expert-TP splits fc1's rows and fc2's columns, with no
    communication here (the token dispatcher does it, as for ``SequentialMLP``)."""

    def __init__(self, num_local_experts: int, config, submodules=None, pg_collection=None,
                 name: str | None = None) -> None:
        super().__init__(config=config)
        unsupported = [f"{field}={getattr(config, field)!r}" for field in
                       ("gated_linear_unit", "add_bias_linear", "fp8", "fp4", "delay_wgrad_compute",
                        "use_te_activation_func", "bias_activation_fusion") if getattr(config, field, None)]
        if unsupported:
            raise ValueError(f"GroupedMLP (TE-free grouped experts) does not support {', '.join(unsupported)}; "
                             "set moe_grouped_gemm=False for SequentialMLP or use the 'te' spec")
        self.num_local_experts = num_local_experts
        self.ep_group, self.tp_group, self.dp_group = pg_collection.ep, pg_collection.expt_tp, pg_collection.expt_dp
        tp = self.tp_group.size()
        d_in = config.moe_latent_size or config.hidden_size
        if config.moe_ffn_hidden_size % tp:
            raise ValueError(f"moe_ffn_hidden_size={config.moe_ffn_hidden_size} is not divisible by the "
                             f"expert tensor-parallel size {tp}")
        ffn = config.moe_ffn_hidden_size // tp
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        self.linear_fc1_weight = torch.nn.Parameter(
            torch.empty(num_local_experts, ffn, d_in, device=device, dtype=config.params_dtype))
        self.linear_fc2_weight = torch.nn.Parameter(
            torch.empty(num_local_experts, d_in, ffn, device=device, dtype=config.params_dtype))
        if config.perform_initialization:
            self._initialize(config.moe_ffn_hidden_size, tp)
        expert_parallel = config.expert_model_parallel_size > 1
        for param, tp_axis in ((self.linear_fc1_weight, 1), (self.linear_fc2_weight, 2)):
            set_tensor_model_parallel_attributes(param, is_parallel=True, dim=tp_axis, stride=1)
            param.allreduce = not expert_parallel  # as ColumnParallelLinear(is_expert=True): expert-DP reduce

    def _initialize(self, full_ffn: int, tp: int) -> None:
        """The draws SequentialMLP's linears make, in its order (expert 0 fc1, fc2, expert 1 ...), so the
        same seed gives both modules the same weights: on CPU the full (un-split) weight is drawn in FP32
        and this rank's expert-TP slice kept; on GPU this rank's slice, through the expert RNG tracker."""
        inits = ((self.linear_fc1_weight, self.config.init_method, 0),
                 (self.linear_fc2_weight, self.config.output_layer_init_method, 1))
        rank = self.tp_group.rank()
        with torch.no_grad():
            for e in range(self.num_local_experts):
                for weight, init, split_dim in inits:
                    if self.config.use_cpu_initialization:
                        shape = list(weight.shape[1:])
                        shape[split_dim] = full_ffn
                        master = torch.empty(shape, dtype=torch.float32)
                        init(master)
                        weight[e].copy_(master.chunk(tp, dim=split_dim)[rank])
                    else:
                        with get_cuda_rng_tracker().fork(get_expert_parallel_rng_tracker_name()):
                            init(weight[e])

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor) -> tuple[torch.Tensor, None]:
        """[T, in] tokens sorted by local expert -> [T, in]; ``tokens_per_expert`` [local experts]."""
        x, probs = permuted_local_hidden_states, permuted_probs
        if self.config.moe_apply_probs_on_input:  # as SequentialMLP: scale inputs, then probs of 1
            x = (probs.unsqueeze(-1) * x).to(x.dtype)
            probs = torch.ones_like(probs)
        counts = tokens_per_expert.tolist() if tokens_per_expert.device.type == "cpu" else None
        offsets = tokens_per_expert.to(device=x.device, non_blocking=True).cumsum(0).to(torch.int32)
        hidden = grouped_linear(x, self.linear_fc1_weight, offsets, counts)
        hidden = self.config.activation_func(hidden)
        dtype = hidden.dtype  # as MLP: the activation times the (FP32) probability, back in the model dtype
        hidden = (hidden * probs.unsqueeze(-1)).to(dtype)
        return grouped_linear(hidden, self.linear_fc2_weight, offsets, counts), None

    def backward_dw(self) -> None:
        """Weight gradients are never delayed here (delay_wgrad_compute is refused at init)."""

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None
                           ) -> dict[str, ShardedTensor]:
        """The global tensors SequentialMLP writes (``{prefix}experts.linear_fc1.weight``, [experts, ffn,
        in]; this rank's slice: its EP range of experts and its expert-TP rows/columns), so a checkpoint
        of either module loads into the other at any layout."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        if metadata.get("singleton_local_shards", False):
            raise NotImplementedError("GroupedMLP does not write singleton_local_shards checkpoints")
        n = len(sharded_offsets)
        ep_rank, ep_size = self.ep_group.rank(), self.ep_group.size()
        tp_rank, tp_size = self.tp_group.rank(), self.tp_group.size()
        first, total = ep_rank * self.num_local_experts, ep_size * self.num_local_experts
        out, extra = {}, []
        for attr, linear, tp_axis in (("linear_fc1_weight", "linear_fc1", 1), ("linear_fc2_weight", "linear_fc2", 2)):
            out[f"{prefix}{attr}"] = ShardedTensor.from_rank_offsets(
                f"{prefix}experts.{linear}.weight", getattr(self, attr), *sharded_offsets,
                (n, ep_rank, ep_size), (n + tp_axis, tp_rank, tp_size),
                replica_id=(0, 0, self.dp_group.rank()), prepend_axis_num=n)
            # SequentialMLP's linears also write an (empty) extra state per expert and expect it on load
            extra += [make_sharded_object_for_checkpoint(
                None, f"{prefix}experts.{linear}._extra_state", (*sharded_offsets, (n, first + e, total)),
                replica_id=(0, tp_rank, self.dp_group.rank())) for e in range(self.num_local_experts)]
        out[f"{prefix}_extra_state"] = extra
        return out

    def get_extra_state(self) -> None:
        """Nothing to keep; present so the checkpoint's per-expert extra states (see sharded_state_dict)
        have a state-dict key to load into."""
        return None

    def set_extra_state(self, state: object) -> None:
        """The loaded per-expert extra states are empty (SequentialMLP's linears write None)."""
