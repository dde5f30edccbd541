"""Bridge mapping for stacked routed-expert weights (the TE-free grouped experts, ``GroupedMLP``).

One Megatron tensor ``mlp.experts.linear_fc1_weight`` [local experts, ffn / expert-TP, in] holds the
experts of this EP rank; HF stores one tensor per expert (``mixer.experts.{e}.up_proj.weight`` [ffn, in]).
Declared in the bridge table like the other mappings, with ``{expert}`` marking where the global expert
number goes: the mapping itself knows which experts its EP rank holds, so the names it claims (its
``hf_param``) are exactly the HF tensors that rank reads or writes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from megatron.bridge.models.conversion.param_mapping import MegatronParamMapping

EXPERT_FIELD = "{expert}"


class GroupedExpertMapping(MegatronParamMapping[dict]):
    """Stacked local experts <-> one HF tensor per expert; expert-TP splits ``tp_axis`` (1: fc1's rows,
    2: fc2's columns). Import stacks the rank's experts; export gathers expert-TP shards, then all EP
    ranks' experts, and returns every expert's HF tensor."""

    def __init__(self, megatron_param: str, hf_param: str, *, num_experts: int, tp_axis: int) -> None:
        pattern = hf_param
        if not isinstance(pattern, str) or EXPERT_FIELD not in pattern:
            raise ValueError(f"GroupedExpertMapping({megatron_param!r}): HF pattern must contain {EXPERT_FIELD}")
        if tp_axis not in (1, 2) or num_experts < 1:
            raise ValueError(f"GroupedExpertMapping({megatron_param!r}): tp_axis must be 1 or 2 and "
                             f"num_experts >= 1, got tp_axis={tp_axis}, num_experts={num_experts}")
        self.hf_pattern, self.num_experts, self.tp_axis = pattern, num_experts, tp_axis
        super().__init__(megatron_param, pattern)

    # ``hf_param`` is derived: {global expert: HF name} for this EP rank's experts
    @property
    def hf_param(self) -> dict[str, str]:
        return {str(e): self.hf_pattern.replace(EXPERT_FIELD, str(e)) for e in self.local_experts()}

    @hf_param.setter
    def hf_param(self, pattern: str) -> None:
        self.hf_pattern = pattern

    def local_experts(self) -> range:
        """Global numbers of the experts this EP rank holds."""
        ep_size, ep_rank = (self.ep_size, self.ep_rank) if self.ep_group is not None else (1, 0)
        if self.num_experts % ep_size:
            raise ValueError(f"{self.megatron_param}: {self.num_experts} experts do not split over EP={ep_size}")
        per_rank = self.num_experts // ep_size
        return range(ep_rank * per_rank, (ep_rank + 1) * per_rank)

    def _validate_patterns(self) -> None:
        """Same number of ``*`` (layer numbers) on both sides; ``{expert}`` is filled per EP rank."""
        if "**" in self.megatron_param or self.megatron_param.count("*") != self.hf_pattern.count("*"):
            raise ValueError(f"GroupedExpertMapping: wildcard mismatch between {self.megatron_param!r} "
                             f"and {self.hf_pattern!r} (only single '*' wildcards are supported)")

    def resolve(self, captures: tuple[str, ...]) -> GroupedExpertMapping:
        megatron_param, pattern = self.megatron_param, self.hf_pattern
        for capture in captures:
            megatron_param, pattern = megatron_param.replace("*", capture, 1), pattern.replace("*", capture, 1)
        return type(self)(megatron_param, pattern, num_experts=self.num_experts, tp_axis=self.tp_axis)

    def hf_to_megatron(self, hf_weights: dict[str, torch.Tensor], megatron_module: Any) -> torch.Tensor:
        """This rank's experts stacked ([local experts, out, in]), then this rank's expert-TP slice."""
        target = getattr(megatron_module, self.megatron_param.rsplit(".", 1)[1])
        names = self.hf_param
        missing = sorted(set(names) - set(hf_weights), key=int)
        if missing:
            raise ValueError(f"{self.megatron_param}: no HF tensor given for expert(s) {missing} "
                             f"(expected {self.hf_pattern} for experts {min(names, key=int)}..{max(names, key=int)})")
        if self.tp_size == 1:
            return torch.stack([hf_weights[e] for e in names])
        splits = None
        if self.tp_rank == 0:
            stacked = torch.stack([hf_weights[e] for e in names]).to(target.dtype)
            if stacked.shape[self.tp_axis] % self.tp_size:
                raise ValueError(f"{self.megatron_param}: dimension {self.tp_axis} of {tuple(stacked.shape)} "
                                 f"does not split over expert-TP={self.tp_size}")
            splits = list(torch.chunk(stacked, self.tp_size, dim=self.tp_axis))
        return self.scatter_to_tp_ranks(splits, target.shape, target.dtype, target.device)

    def megatron_to_hf(self, megatron_weights: torch.Tensor | None, megatron_module: Any) -> dict[str, torch.Tensor]:
        """Every expert's HF tensor (all EP ranks'), or {} on a pipeline stage that gets nothing."""
        weights = self.broadcast_from_pp_rank(megatron_weights, cache_key=self.megatron_param)
        if weights is None:
            return {}
        if self.tp_size > 1:
            weights = torch.cat(self.gather_from_tp_ranks(weights), dim=self.tp_axis)
        if self.ep_group is not None and self.ep_size > 1:
            parts = [torch.empty_like(weights) for _ in range(self.ep_size)]
            dist.all_gather(parts, weights.contiguous(), group=self.ep_group)
            weights = torch.cat(parts, dim=0)
        if weights.shape[0] != self.num_experts:
            raise ValueError(f"{self.megatron_param}: gathered {weights.shape[0]} experts, expected {self.num_experts}")
        # one tensor per expert, not views of one storage (safetensors refuses shared storage)
        return {self.hf_pattern.replace(EXPERT_FIELD, str(e)): weights[e].clone() for e in range(self.num_experts)}
