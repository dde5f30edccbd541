"""Streaming torch_dist save and load: a meta-device model, one Megatron tensor in memory at a time.

Why the checkpoint written here is the one megatron-core writes for a materialised model (and therefore
reshards on load at any TP/EP/PP, like any other ``torch_dist`` checkpoint):

* Everything in a ``torch_dist`` checkpoint except the tensor bytes comes from ``model.sharded_state_dict()``:
  keys, global shapes, dtypes, each rank's chunks (global offsets incl. the expert axis), replica ids (who
  writes a replicated tensor) and the factories that split fused tensors (Mamba ``in_proj`` / ``conv1d``).
  All of that is a function of module structure, parallel state, shapes and dtypes, never of values, so a
  model built on the meta device with the same provider and parallel state yields the same dict.
* That dict goes through megatron-core's own save path unchanged: ``dist_checkpointing.save`` (factories,
  ``common.pt``, sharding-integrity validation, ``metadata.json``), its key translation and PyT sharded
  tensors, ``MCoreSavePlanner`` (local and global DCP plans, the global ``Metadata``) and the coordinator's
  ``finish`` (``.metadata``). Only the data stage differs: megatron-core's writer resolves every write item
  up front (the whole model in memory); :class:`StreamingWriter` asks the caller for one Megatron tensor
  at a time, writes every plan item that views it with torch DCP's own ``_write_item`` (same bytes,
  same ``_StorageInfo`` records the reader uses) and lets it go.
* Each item finds its bytes through :class:`TensorView`: recorded on the meta model (which tensor a
  ShardedTensor's data belongs to, and its size / stride / storage offset within it) and re-applied to the
  real tensor with ``as_strided``. A view is cloned before writing (``torch.save`` of a view would store
  the whole base tensor, which megatron-core's writer avoids the same way).

Loading (:class:`StreamingLoader`) uses the same meta dict: for a group of tensors, ShardedTensors whose
data are views of freshly allocated tensors go through megatron-core's ``TorchDistLoadShardedStrategy``
(``no_dist``: every rank plans its own reads), so DCP reads each requested chunk from whatever chunks the
checkpoint holds: resharding exactly as a whole-model load does.
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch

from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
from megatron.core.dist_checkpointing.strategies.state_dict_saver import save_state_dict_async_plan
from megatron.core.dist_checkpointing.strategies.torch import (MCoreSavePlanner, TorchDistLoadShardedStrategy,
                                                               _replace_state_dict_keys_with_sharded_keys,
                                                               mcore_to_pyt_state_dict)
from torch.distributed.checkpoint.filesystem import _write_item
from torch.distributed.checkpoint.planner import WriteItemType

from nemotron3_super.conversion.hf_io import CheckpointError
from nemotron3_super.conversion.megatron_io import CpuTorchDistSaveStrategy
from nemotron3_super.host_compat.cuda_on_cpu import _finalize_on_cpu

Write = Callable[[str, torch.Tensor], None]  # (Megatron tensor name, its values) -> written


class TensorSource(Protocol):
    """HF tensors by name, as conversion consumes them: the seam for readers other than plain safetensors
    (e.g. a dequantizing one). ``nbytes`` is what reading ``name`` costs on disk (progress and GB/s)."""

    def names(self) -> Iterable[str]: ...

    def dtype(self, name: str) -> torch.dtype: ...

    def nbytes(self, name: str) -> int: ...

    def get(self, name: str) -> torch.Tensor: ...


@dataclass(frozen=True)
class TensorView:
    """Where one ShardedTensor's data lies inside its Megatron tensor ``owner`` (element units)."""

    owner: str
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.as_strided(self.size, self.stride, self.offset)


ShardKey = tuple[str, tuple[int, ...]]  # (checkpoint key, global offset): a DCP write item's index


def shard_views(tensors: dict[str, torch.Tensor], sharded: Any) -> dict[ShardKey, tuple[ShardedTensor, TensorView]]:
    """Every ShardedTensor of a (factory-applied) sharded state dict, with the Megatron tensor it views.
    ``tensors``: the model's tensors by name (the objects the sharded state dict refers to)."""
    owners = {id(t): n for n, t in tensors.items()}  # local to this call: the objects are alive throughout
    views = {}
    for sh in nested_values(sharded):
        if not isinstance(sh, ShardedTensor):
            continue
        base = sh.data._base if sh.data._base is not None else sh.data
        owner = owners.get(id(base))
        if owner is None:
            raise CheckpointError(f"sharded tensor {sh.key!r} does not view any model tensor (cannot stream it)")
        views[(sh.key, tuple(sh.global_offset))] = (
            sh, TensorView(owner, tuple(sh.data.shape), tuple(sh.data.stride()), sh.data.storage_offset()))
    return views


class RealModules:
    """Stand-ins for meta modules when calling the host's mappings, which read the device, dtype and shape
    of the module's own tensors (e.g. ``ReplicatedMapping`` moves its result to ``module.weight.device``).
    A stand-in is a shallow copy of the module (config, children, attributes shared) whose own parameters
    and buffers are real: the loaded values where ``lookup`` has them, else uninitialised storage that is
    never written (address space, not memory: untouched pages are not resident). The meta model itself is
    never changed, so the sharded state dict's references to it stay valid. The last stand-in is reused
    (consecutive tensors usually share a module)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device
        self._last: tuple[str, torch.nn.Module] | None = None

    def of(self, module: torch.nn.Module, prefix: str,
           lookup: Callable[[str], torch.Tensor | None] = lambda name: None) -> torch.nn.Module:
        """``module`` (named ``prefix`` in the model) with real own tensors."""
        if self._last is not None and self._last[0] == prefix and not any(
                lookup(f"{prefix}.{k}") is not None for k in self._last[1]._parameters):
            return self._last[1]
        twin = copy.copy(module)

        def real(name: str, t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or not t.is_meta:
                return t
            loaded = lookup(f"{prefix}.{name}")
            value = loaded if loaded is not None else torch.empty(t.shape, dtype=t.dtype, device=self.device)
            return torch.nn.Parameter(value, requires_grad=False) if isinstance(t, torch.nn.Parameter) else value

        twin._parameters = {k: real(k, v) for k, v in module._parameters.items()}
        twin._buffers = {k: real(k, v) for k, v in module._buffers.items()}
        self._last = (prefix, twin)
        return twin


class StreamingWriter(FileSystemWriterAsync):
    """megatron-core's writer (same plan preparation and ``finish``) whose data stage is driven by the
    producer: :meth:`write_owner` writes every plan item of one Megatron tensor to this rank's file."""

    def __init__(self, path: Path, views: dict[ShardKey, tuple[ShardedTensor, TensorView]]) -> None:
        super().__init__(path, thread_count=1)
        self._views = views
        self._items: dict[str, list] = {}
        self._results: list = []
        self._stream: Any = None

    def prepare_write_data(self, plan: Any, planner: Any) -> None:
        """Record the plan (no data is resolved here, unlike megatron-core's writer)."""
        self.plan, self.planner, self.write_buckets, self.results_queue = plan, planner, [], None
        for item in plan.items:
            if item.type == WriteItemType.BYTE_IO:
                self._items.setdefault("", []).append(item)
                continue
            entry = self._views.get((item.index.fqn, tuple(item.index.offset)))
            if entry is None:
                raise CheckpointError(f"write item {item.index.fqn!r} at {list(item.index.offset)} has no "
                                      "model tensor behind it (cannot stream it)")
            self._items.setdefault(entry[1].owner, []).append(item)

    @property
    def file_name(self) -> str:
        return f"{self.plan.storage_data.prefix}0.distcp"

    def open(self) -> None:
        self._stream = open(Path(self.checkpoint_dir) / self.file_name, "wb")
        for item in self._items.pop("", []):  # ShardedObjects (e.g. empty ``_extra_state``), already bytes
            self._write(item, self.planner.resolve_data(item))

    def _write(self, item: Any, data: Any) -> None:
        self._results.append(_write_item(self.transforms, self._stream, data, item, self.file_name,
                                         self.serialization_format))

    def write_owner(self, owner: str, tensor: torch.Tensor) -> None:
        """Write the plan items that view Megatron tensor ``owner`` (values ``tensor``, on CPU)."""
        if (not tensor.is_contiguous() or tensor.storage_offset()
                or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size()):
            tensor = tensor.clone(memory_format=torch.contiguous_format)  # views are recorded on a plain tensor
        for item in self._items.pop(owner, []):
            view = self._views[(item.index.fqn, tuple(item.index.offset))][1]
            data = view.of(tensor).reshape(item.tensor_data.chunk.sizes)
            if data.dtype != item.tensor_data.properties.dtype:
                raise CheckpointError(f"{item.index.fqn}: values are {data.dtype}, the plan says "
                                      f"{item.tensor_data.properties.dtype}")
            if data.untyped_storage().nbytes() != data.numel() * data.element_size():
                data = data.clone()  # torch.save of a view would write the whole base tensor
            self._write(item, data)

    def close(self) -> None:
        """Flush and fsync this rank's file; every planned item must have been written."""
        if self._items:
            owner, items = next(iter(self._items.items()))
            raise CheckpointError(f"{len(self._items)} Megatron tensor(s) were not produced, e.g. {owner!r} "
                                  f"({items[0].index.fqn!r})")
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()

    def abort(self) -> None:
        """Close the file after a failure (the staged output folder is removed by the caller)."""
        self._stream.close()

    def retrieve_write_results(self) -> list:
        return self._results


class StreamingSaveStrategy(CpuTorchDistSaveStrategy):
    """torch_dist save of a meta-device model: megatron-core's planning, then ``produce(write)`` calls
    ``write(name, values)`` once per Megatron tensor of this rank, in its own order (so collectives inside
    the producer run in the same order on every rank)."""

    def __init__(self, tensors: dict[str, torch.Tensor], produce: Callable[[Write], None]) -> None:
        super().__init__("torch_dist", 1)
        self.tensors, self.produce = tensors, produce

    def async_save(self, sharded_state_dict: Any, checkpoint_dir: Path, async_strategy: str = "mcore") -> AsyncRequest:
        """As megatron-core's ``async_save`` with the built-in (non-NVRx) path and no plan caching."""
        views = shard_views(self.tensors, sharded_state_dict)
        sharded, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, self.keep_only_main_replica)
        writer = StreamingWriter(Path(checkpoint_dir), views)
        planner = MCoreSavePlanner(dedup_replicated_tensors=not self.keep_only_main_replica,
                                   flatten_state_dict=False, flatten_sharded_tensors=False)
        ret = save_state_dict_async_plan(mcore_to_pyt_state_dict(sharded, False), writer, None, 0, planner=planner)
        return AsyncRequest(functools.partial(self._write_all, writer), (), [lambda: _finalize_on_cpu(*ret[0])])

    def _write_all(self, writer: StreamingWriter) -> None:
        writer.open()
        try:
            self.produce(writer.write_owner)
        except BaseException:
            writer.abort()
            raise
        writer.close()


def _standalone(sh: ShardedTensor) -> ShardedTensor:
    """The same chunk without megatron's legacy prepended axes (e.g. the expert axis of SequentialMLP):
    loaded through those, a key's chunks on a rank must all be requested together (megatron-core then
    builds a PyT ShardedTensor over the whole local grid), which would tie a load group to a whole layer's
    experts. With the axes folded into the local shape (size 1 each; same key, global shape and offsets,
    so the same bytes are read) each chunk loads on its own."""
    if not sh.prepend_axis_num:
        return sh
    local = (1,) * sh.prepend_axis_num + tuple(sh.local_shape)
    return replace(sh, data=sh.data.view(local), local_shape=local, prepend_axis_num=0)


def _union_over_ranks(keys: set[str]) -> set[str]:
    """``keys`` of every rank of the default process group (just ``keys`` without one)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return keys
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, sorted(keys))
    return set().union(*map(set, every))


class StreamingLoader:
    """Loads groups of Megatron tensors of a meta-device model from a torch_dist checkpoint into tensors of
    its own, one group in memory at a time (tensors stored wider than the model, e.g. an FP32 router
    weight, keep the stored dtype: nothing is rounded)."""

    def __init__(self, tensors: dict[str, torch.Tensor], sharded_state_dict: Any, checkpoint_dir: Path,
                 order: list[str], group_bytes: int = 256 * 2**20, device: torch.device | str = "cpu") -> None:
        apply_factories(sharded_state_dict)
        self.tensors, self.dir, self.device = tensors, checkpoint_dir, torch.device(device)
        self._by_owner: dict[str, list[tuple[ShardedTensor, TensorView]]] = {}
        for sh, view in shard_views(tensors, sharded_state_dict).values():
            self._by_owner.setdefault(view.owner, []).append((sh, view))
        # metadata unpickled once, not per group: megatron-core's reader caches it per path, process-wide,
        # so the entry is dropped again in close() (a later checkpoint at the same path must be read afresh)
        self.strategy = TorchDistLoadShardedStrategy(cache_metadata=True)
        self._forget_metadata()
        stored = {k: v.dtype for k, v in self.strategy.load_tensors_metadata(checkpoint_dir).items()
                  if hasattr(v, "dtype")}
        wanted = {sh.key for shards in self._by_owner.values() for sh, _ in shards}
        everywhere = _union_over_ranks(wanted)  # a pipeline stage holds only its own layers' keys
        if wanted - set(stored) or set(stored) - everywhere:  # as dist_checkpointing.load(strict="raise_all")
            missing, extra = sorted(wanted - set(stored)), sorted(set(stored) - everywhere)
            raise CheckpointError(f"{checkpoint_dir}: checkpoint does not match the model: missing {missing[:10]}, "
                                  f"unexpected {extra[:10]}")
        self.dtypes = {}
        for owner, shards in self._by_owner.items():
            # a stored dtype wider than the model's (Nano's FP32 router), or of the same width in another
            # format (FP16 in a BF16 model), is kept: a cast to the model's dtype would round
            dtype, model_dtype = max((stored[sh.key] for sh, _ in shards), key=lambda d: d.itemsize), tensors[owner].dtype
            self.dtypes[owner] = model_dtype if dtype.itemsize < model_dtype.itemsize else dtype
        self.groups, self._group_of, size = [[]], {}, 0
        for name in order:  # consecutive tensors up to group_bytes per load call (fewer, larger reads)
            if name not in self._by_owner:
                raise CheckpointError(f"Megatron tensor {name!r} is not in the model's sharded state dict")
            nbytes = tensors[name].numel() * self.dtypes[name].itemsize
            if self.groups[-1] and size + nbytes > group_bytes:
                self.groups.append([])
                size = 0
            self.groups[-1].append(name)
            self._group_of[name], size = len(self.groups) - 1, size + nbytes
        self.loaded: dict[str, torch.Tensor] = {}
        self._group: int | None = None

    def ensure(self, name: str) -> torch.Tensor:
        """Tensor ``name`` with its values (its group is read now if it is not the one in memory)."""
        group = self._group_of[name]
        if group != self._group:
            self.free()
            self._load(self.groups[group])
            self._group = group
        return self.loaded[name]

    def _load(self, names: list[str]) -> None:
        request = {}
        for name in names:
            real = torch.empty(self.tensors[name].shape, dtype=self.dtypes[name])
            self.loaded[name] = real
            for sh, view in self._by_owner[name]:
                request[f"{len(request)}"] = _standalone(replace(sh, data=view.of(real), dtype=self.dtypes[name]))
        self.strategy.load(request, self.dir)  # DCP copies into the views: the tensors now hold the values
        if self.device.type != "cpu":
            self.loaded = {n: t.to(self.device) for n, t in self.loaded.items()}

    def free(self) -> None:
        self.loaded, self._group = {}, None

    def _forget_metadata(self) -> None:
        from megatron.core.dist_checkpointing.strategies.cached_metadata_filesystem_reader import (
            CachedMetadataFileSystemReader)

        CachedMetadataFileSystemReader._metadata_cache.pop(os.path.abspath(os.fspath(self.dir)), None)

    def close(self) -> None:
        """Free the loaded group and the cached checkpoint metadata."""
        self.free()
        self._forget_metadata()
