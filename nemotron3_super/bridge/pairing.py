"""Pairs every Megatron tensor of a built model with its HF tensor(s), strictly.

The host's loader logs "Can't find ... in hf_keys" and leaves the weight uninitialised; here an unmapped
Megatron tensor, an HF tensor claimed twice, a missing HF tensor or an unused one is an error naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from megatron.bridge.models.conversion.mapping_registry import MegatronMappingRegistry
from megatron.bridge.models.conversion.param_mapping import MegatronParamMapping

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.bridge.table import super_mappings
from nemotron3_super.errors import CheckpointError


@dataclass
class Pair:
    """One Megatron tensor and the HF tensor(s) it is made of."""

    megatron: str  # global name (expert numbers across all EP ranks)
    mapping: MegatronParamMapping
    hf: tuple[str, ...]
    local: str = ""  # name in this rank's model (differs from ``megatron`` for experts under EP)

    def hf_inputs(self, read: Any) -> Any:
        """The mapping's HF argument: one tensor, or {role: tensor} for fused ones (QKV)."""
        if isinstance(self.mapping.hf_param, str):
            return read(self.mapping.hf_param)
        return {role: read(name) for role, name in self.mapping.hf_param.items()}


def megatron_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers (router.expert_bias) by name; no ``_extra_state``."""
    return {n: t for n, t in model.state_dict(keep_vars=True).items()
            if isinstance(t, torch.Tensor) and not n.endswith("_extra_state")}


def module_of(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The module owning tensor ``name``, with ``.config`` set (host mappings read it)."""
    module = model.get_submodule(name.rsplit(".", 1)[0])
    if not hasattr(module, "config"):
        module.config = model.config
    return module


_LOCAL_EXPERT = re.compile(r"(\.experts\.local_experts\.)(\d+)(\.)|(\.experts\.linear_fc[12]\.weight)(\d+)$")


def global_expert_name(name: str, ep_rank: int, local_experts: int) -> str:
    """``...local_experts.{i}...`` / ``...linear_fc1.weight{i}`` on EP rank r -> expert ``r * local + i``."""
    def renumber(m: re.Match) -> str:
        if m.group(1):
            return f"{m.group(1)}{ep_rank * local_experts + int(m.group(2))}{m.group(3)}"
        return f"{m.group(4)}{ep_rank * local_experts + int(m.group(5))}"

    return _LOCAL_EXPERT.sub(renumber, name)


_DECODER_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def layer_offset(model: torch.nn.Module) -> int:
    """Global index of this pipeline stage's first decoder layer (megatron-core numbers layers globally
    from 1 in ``layer_number``; module names restart at 0 on every stage)."""
    layers = getattr(getattr(model, "decoder", None), "layers", None)
    return int(layers[0].layer_number) - 1 if layers is not None and len(layers) else 0


def _parallel_ranks() -> tuple[int, int]:
    """(EP size, EP rank) of this process (1, 0 without a parallel state)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 1, 0
    ep = parallel_state.get_expert_model_parallel_world_size()
    return ep, parallel_state.get_expert_model_parallel_rank() if ep > 1 else 0


def global_name(local: str, arch: SuperArchitecture, offset: int = 0, ep_rank: int | None = None) -> str:
    """A local Megatron name as the whole model names it: expert numbers across EP ranks (``ep_rank``:
    default this process's), decoder layers across pipeline stages (``offset``: the stage's first layer)."""
    ep, own_rank = _parallel_ranks()
    name = global_expert_name(local, own_rank if ep_rank is None else ep_rank, (arch.n_routed_experts or 0) // ep) \
        if ep > 1 else local
    if offset:
        name = _DECODER_LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name)
    return name


def hf_names(mapping: MegatronParamMapping) -> tuple[str, ...]:
    """The HF tensor name(s) of a mapping: one, or the parts of a fused tensor (QKV)."""
    return (mapping.hf_param,) if isinstance(mapping.hf_param, str) else tuple(mapping.hf_param.values())


def registry_for(arch: SuperArchitecture) -> MegatronMappingRegistry:
    """The host registry of every mapping for ``arch`` (the bridge and our conversion share it)."""
    return MegatronMappingRegistry(*super_mappings(arch))


def plan(names: Iterable[str], arch: SuperArchitecture, pg_collection: Any = None, offset: int = 0) -> list[Pair]:
    """One Pair per Megatron name (this rank's); raises on an unmapped name or an HF tensor claimed twice.
    ``offset``: this pipeline stage's first global decoder layer (:func:`layer_offset`)."""
    registry = registry_for(arch)
    if pg_collection is not None:
        registry.set_process_groups_from_pg_collection(pg_collection)
    pairs, unmapped, owner = [], [], {}
    for local in names:
        name = global_name(local, arch, offset)
        mapping = registry.megatron_to_hf_lookup(name)
        if mapping is None:
            unmapped.append(name)
            continue
        hf = hf_names(mapping)
        for h in hf:
            if h in owner:
                raise CheckpointError(f"HF tensor {h!r} is claimed by Megatron {owner[h]!r} and {name!r}")
            owner[h] = name
        pairs.append(Pair(name, mapping, hf, local))
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} Megatron tensor(s) have no HF name in the bridge table: "
                              + ", ".join(unmapped[:10]))
    return pairs


def check_coverage(pairs: list[Pair], hf_names: Iterable[str], where: str) -> None:
    """Every HF tensor used exactly once (over all ranks), every needed one present."""
    import torch.distributed as dist

    hf_names = set(hf_names)
    needed = {h: p.megatron for p in pairs for h in p.hf}
    if dist.is_initialized() and dist.get_world_size() > 1:  # experts are split over EP ranks
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, needed)
        needed = {h: m for part in gathered for h, m in part.items()}
    missing = [f"{h!r} (for Megatron {m!r})" for h, m in needed.items() if h not in hf_names]
    unused = sorted(hf_names - set(needed))
    problems = ([f"missing HF tensor(s): {', '.join(missing[:10])}"] if missing else []) + (
        [f"HF tensor(s) no Megatron tensor uses: {', '.join(unused[:10])}"] if unused else [])
    if problems:
        raise CheckpointError(f"{where}: " + "; ".join(problems))


def check_shapes(pairs: list[Pair], tensors: dict[str, torch.Tensor], model: torch.nn.Module,
                 hf_shapes: dict[str, tuple[int, ...]]) -> None:
    """Run each HF->Megatron transform on meta tensors of the HF shapes: the result must have the
    Megatron tensor's shape (checks the table at full scale without any memory)."""
    bad = []
    for pair in pairs:
        fake = pair.hf_inputs(lambda n: torch.empty(hf_shapes[n], device="meta"))
        out = pair.mapping.hf_to_megatron(fake, module_of(model, pair.local))
        if tuple(out.shape) != tuple(tensors[pair.local].shape):
            bad.append(f"{pair.megatron}: HF {[hf_shapes[h] for h in pair.hf]} -> {tuple(out.shape)}, "
                       f"model has {tuple(tensors[pair.local].shape)}")
    if bad:
        raise CheckpointError(f"{len(bad)} shape mismatch(es): " + "; ".join(bad[:10]))


def check_host_tasks(bridge: Any, hf_pretrained: Any, megatron_model: Any, tasks: list) -> None:
    """For the host's own conversion path: fail where the host would only log and skip."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        return  # local names are stage-relative there; the single-stage check covers the table itself
    models = megatron_model if isinstance(megatron_model, list) else [megatron_model]
    names = [n for m in models for n in megatron_tensors(m)]
    # the host fills skipped names with module-less placeholder tasks (for PP peers): those are not covered
    covered = {t.global_param_name for t in tasks if t is not None and t.megatron_module is not None}
    skipped = [n for n in names if n.replace("module.", "", 1) not in covered and n not in covered]
    if skipped:
        raise CheckpointError(f"{len(skipped)} Megatron tensor(s) without a mapping or HF tensor: "
                              + ", ".join(skipped[:10]))
    state = getattr(hf_pretrained, "state", None)
    source = getattr(state, "source", None)
    if source is not None and len(models) == 1:  # single stage: every HF tensor must be used
        used = {h for t in tasks if t is not None for h in hf_names(t.mapping)}
        unused = sorted(set(source.get_all_keys()) - used)
        if unused:
            raise CheckpointError(f"{len(unused)} HF tensor(s) no Megatron tensor uses: {', '.join(unused[:10])}")
