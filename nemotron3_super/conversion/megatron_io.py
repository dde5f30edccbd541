"""Megatron side of conversion on CPU: process groups, model build, torch_dist checkpoint save / load.

Checkpoint layout (megatron-core dist checkpoint, as Megatron-Bridge's import writes it)::

    <path>/latest_checkpointed_iteration.txt   "0"
    <path>/iter_0000000/                        torch_dist: {"model": model.sharded_state_dict()}
    <path>/nemotron3_super.json                 HF config.json dict, layer spec, HF dtype per tensor

megatron-core's torch_dist *save* stages tensors with a CUDA synchronize and broadcasts its failure flag
through a CUDA tensor, so it fails on a machine without a GPU driver. :class:`CpuTorchDistSaveStrategy`
is the same strategy with those two steps done on CPU (a subclass, nothing in megatron-core is patched).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from nemotron3_super.architecture import SuperArchitecture
from nemotron3_super.host_compat import ensure_host_importable

ensure_host_importable()
from megatron.core import dist_checkpointing, parallel_state  # noqa: E402
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest  # noqa: E402
from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy  # noqa: E402

ITERATION_DIR = "iter_0000000"
META_FILE = "nemotron3_super.json"


@contextlib.contextmanager
def parallel_group(tp: int = 1, ep: int = 1) -> Iterator[None]:
    """gloo process group (torchrun's ranks, else one local rank) + megatron-core parallel state with
    TP ``tp`` / EP ``ep``, unless the caller (tests, a training job) already made them."""
    made_group = not dist.is_initialized()
    if made_group:
        if "RANK" not in os.environ:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=str(port))
        dist.init_process_group("gloo")
    made_parallel = not parallel_state.model_parallel_is_initialized()
    if made_parallel:
        if dist.get_world_size() % (tp * ep):
            raise ValueError(f"world size {dist.get_world_size()} is not a multiple of tp={tp} x ep={ep}")
        parallel_state.initialize_model_parallel(tp, 1, expert_model_parallel_size=ep)
    try:
        yield
    finally:
        if made_parallel:
            parallel_state.destroy_model_parallel()
        if made_group:
            dist.destroy_process_group()


def single_process_group() -> contextlib.AbstractContextManager:
    """TP = EP = PP = 1 (the CPU default)."""
    return parallel_group(1, 1)


def shared_temp_dir(parent: Path, prefix: str) -> Path:
    """A temporary folder made by rank 0, the same path on every rank."""
    import tempfile

    path = [tempfile.mkdtemp(prefix=prefix, dir=parent) if dist.get_rank() == 0 else None]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(path, src=0)
    return Path(path[0])


@contextlib.contextmanager
def cpu_current_device() -> Iterator[None]:
    """Only without CUDA, scoped to model construction and the conversion loop: megatron-core 0.19
    allocates a few tensors with ``device=torch.cuda.current_device()`` even under
    ``use_cpu_initialization``, and the host's ReplicatedMapping moves tensors there at TP > 1; here that
    call returns the default device (cpu) instead of failing for want of a driver. Restored on exit."""
    if torch.cuda.is_available():
        yield
        return
    original = torch.cuda.current_device
    torch.cuda.current_device = torch.get_default_device
    try:
        yield
    finally:
        torch.cuda.current_device = original


def build_model(arch: SuperArchitecture, dtype: torch.dtype, spec_impl: str = "local",
                **overrides: Any) -> torch.nn.Module:
    """The provider's HybridModel on CPU with uninitialised weights (conversion overwrites every one)."""
    from megatron.core.tensor_parallel import random as mp_random

    from nemotron3_super.provider import SuperModelProvider

    if parallel_state.model_parallel_is_initialized():  # shard as the parallel state says
        tp = parallel_state.get_tensor_model_parallel_world_size()
        overrides = {"tensor_model_parallel_size": tp, "sequence_parallel": tp > 1,  # MoE at TP > 1 needs SP
                     "expert_model_parallel_size": parallel_state.get_expert_model_parallel_world_size(),
                     **overrides}
    provider = SuperModelProvider.from_architecture(
        arch, spec_impl=spec_impl, use_cpu_initialization=True, perform_initialization=False,
        moe_token_dispatcher_type="allgather",  # alltoall allocates a CUDA stream at build; same weights
        params_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, **overrides)
    provider.finalize()
    # nothing is initialised randomly here: megatron's inference tracker makes its RNG fork() a no-op (CPU or GPU)
    mp_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    with cpu_current_device():
        model = provider.provide()
    return model.eval()


def _finalize_on_cpu(storage_writer: Any, global_metadata: Any, dist_wrapper: Any) -> None:
    """megatron-core's ``save_state_dict_async_finalize`` with the failure flag broadcast on CPU."""
    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint.utils import _get_failure_dict

    all_results = dist_wrapper.gather_object(storage_writer.retrieve_write_results())
    failures = {}
    if dist_wrapper.is_coordinator:
        failures = _get_failure_dict(all_results)
        if not failures:
            storage_writer.finish(global_metadata, all_results)
    flag = torch.tensor([int(bool(failures))], dtype=torch.int)
    dist.broadcast(flag, src=dist_wrapper.coordinator_rank, group=dist_wrapper.group)
    if flag.item():
        raise CheckpointException("write", failures)


class CpuTorchDistSaveStrategy(TorchDistSaveShardedStrategy):
    """torch_dist save that runs without a GPU: tensors are staged with a blocking copy (no
    ``torch.cuda.synchronize``) and the write-failure flag travels as a CPU tensor. Same files, same format."""

    def _get_save_and_finalize_callbacks(self, writer: Any, save_state_dict_ret: Any,
                                         async_strategy: str) -> AsyncRequest:
        save_fn, _, save_args = writer.get_save_function_and_args()
        preload_fn = functools.partial(writer.preload_tensors, writer.write_buckets, False) if save_fn else None
        return AsyncRequest(save_fn, save_args, [lambda: _finalize_on_cpu(*save_state_dict_ret)],
                            preload_fn=preload_fn)


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``model`` as a torch_dist checkpoint under ``path`` (which must exist and be empty)."""
    ckpt_dir = path / ITERATION_DIR
    if dist.get_rank() == 0:
        ckpt_dir.mkdir()
    dist.barrier()
    strategy = CpuTorchDistSaveStrategy("torch_dist", 1)  # the model is on CPU here, GPU or not
    dist_checkpointing.save({"model": model.sharded_state_dict()}, str(ckpt_dir), sharded_strategy=strategy,
                            async_sharded_save=False)
    if dist.get_rank() == 0:
        (path / "latest_checkpointed_iteration.txt").write_text("0\n")
        (path / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_meta(path: Path) -> dict[str, Any]:
    """Our metadata file of a checkpoint written by ``convert import`` (names the problem when absent)."""
    meta_path = path / META_FILE
    if not (path / ITERATION_DIR).is_dir():
        raise FileNotFoundError(f"{path}: no {ITERATION_DIR}/ (expected a checkpoint written by "
                                "`nemotron3-super convert import`)")
    return json.loads(meta_path.read_text()) if meta_path.is_file() else {}


def checkpoint_dtypes(path: Path) -> dict[str, torch.dtype]:
    """Stored dtype of every sharded tensor key (from the checkpoint metadata, no data read)."""
    return {k: v.dtype for k, v in dist_checkpointing.load_tensors_metadata(str(path / ITERATION_DIR)).items()
            if hasattr(v, "dtype")}


def load_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Load a torch_dist checkpoint into ``model``; parameters stored wider than the model keeps them
    (e.g. Nano's FP32 router weight) get the stored dtype first, so nothing is rounded."""
    stored = checkpoint_dtypes(path)
    params = {id(t): (n, t) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    sharded = model.sharded_state_dict()
    for sh in sharded.values():
        data = getattr(sh, "data", None)
        key = getattr(sh, "key", None)
        if data is None or key not in stored or id(data) not in params:
            continue
        if stored[key].itemsize <= data.dtype.itemsize:  # narrower or equal: load_state_dict's cast is exact
            continue
        params[id(data)][1].data = torch.empty_like(data, dtype=stored[key])
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path / ITERATION_DIR),
                                    strict="raise_all")
    result = model.load_state_dict(state["model"], strict=False)
    missing_keys = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: checkpoint does not match the model: missing {missing_keys[:10]}, "
                         f"unexpected {result.unexpected_keys[:10]}")
