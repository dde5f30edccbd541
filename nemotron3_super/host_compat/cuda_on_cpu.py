"""The host's CUDA assumptions, on a machine without a GPU (Megatron-Bridge 0.6.x, megatron-core 0.19).

Even the host's ``--device cpu`` conversion stops before any bridge runs on a CPU-only machine. Each fix
below is named, installed only when torch sees no CUDA device, idempotent, and a no-op on GPU machines:

- :func:`cpu_process_group`: ``ModelProviderMixin.provide_distributed_model`` and
  ``initialize_model_parallel`` call ``torch.cuda.set_device`` and start NCCL when no process group
  exists. A gloo group is started first (torchrun's environment, else one rank on an in-process store,
  so no TCP port is taken), and the model build sees the CPU as its current device (megatron-core
  allocates a few tensors on ``torch.cuda.current_device()`` even under ``use_cpu_initialization``).
- :func:`cpu_rng_tracker`: ``model_parallel_cuda_manual_seed`` seeds CUDA generators
  (``torch.cuda.get_rng_state`` in the tracker's ``add``). Without CUDA the tracker keeps CPU generator
  states for the same names and seeds; ``fork()`` swaps the CPU RNG.
- :func:`cpu_rng_state_at_save`: the checkpoint writer's ``get_rng_state`` reads
  ``torch.cuda.get_rng_state()``; without CUDA that entry is an empty tensor (there is no CUDA RNG;
  loading it on a GPU fails loudly instead of seeding from a made-up state).
- :func:`cpu_torch_dist_save`: megatron-core's torch_dist writer stages tensors with a non-blocking copy
  and ``torch.cuda.synchronize()``, and broadcasts its failure flag as a CUDA tensor; without CUDA it
  stages with a blocking copy and broadcasts on CPU (:func:`cpu_save_callbacks`). Same files, same format.
- :func:`cpu_seed_in_load_context`: ``load_megatron_model`` (``AutoBridge.export_ckpt``, the host's CPU
  conversion worker) builds the model inside ``temporary_distributed_context``, which seeds the RNG tracker
  only when CUDA is present; megatron-core's MambaMixer forks that tracker in ``__init__``, so without CUDA
  every Mamba model failed with "rng state model-parallel-rng is not added". Seeded here as the host seeds
  it on a GPU (``model_parallel_cuda_manual_seed(0)``, CPU generator states by fix 2).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any, Callable, Iterator

from nemotron3_super.host_compat import hooks

logger = logging.getLogger(__name__)

_MARK = "_nemotron3_super_cpu"  # set on every wrapper this module installs (idempotence)


def _cuda_missing() -> bool:
    import torch

    return not torch.cuda.is_available()


def _wrap(owner: Any, name: str, make: Callable[[Callable], Callable]) -> bool:
    """Replace ``owner.name`` by ``make(original)`` once; returns whether the wrapper is in place."""
    original = getattr(owner, name)
    if getattr(original, _MARK, False):
        return True
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)
    return True


@contextlib.contextmanager
def cpu_as_current_device() -> Iterator[None]:
    """``torch.cuda.current_device()`` answers the default device (cpu) inside; restored on exit."""
    import torch

    original = torch.cuda.current_device
    torch.cuda.current_device = torch.get_default_device
    try:
        yield
    finally:
        torch.cuda.current_device = original


def start_cpu_process_group() -> None:
    """A gloo group when none exists: torchrun's (from its environment), else one rank on an in-process
    store (nothing is written to ``os.environ`` for child processes to inherit)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    else:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def cpu_process_group() -> bool:
    """Fix 1 (see module docstring). Returns whether it is active."""
    if not _cuda_missing():
        return False
    from megatron.bridge.models.model_provider import ModelProviderMixin

    def make(original: Callable) -> Callable:
        def method(self, *args: Any, **kwargs: Any) -> Any:
            start_cpu_process_group()
            with cpu_as_current_device():
                return original(self, *args, **kwargs)
        return method

    _wrap(ModelProviderMixin, "provide_distributed_model", make)
    return _wrap(ModelProviderMixin, "initialize_model_parallel", make)


def _cpu_tracker_class() -> type:
    from megatron.core.tensor_parallel import random as mp_random
    import torch

    class CpuRNGStatesTracker(mp_random.CudaRNGStatesTracker):
        """megatron-core's tracker over CPU generator states (same names, same seeds)."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name: str = mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            outer = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(outer)

    return CpuRNGStatesTracker


def cpu_rng_tracker() -> bool:
    """Fix 2 (see module docstring). Returns whether it is active."""
    if not _cuda_missing():
        return False
    from megatron.core.tensor_parallel import random as mp_random

    tracker_class = _cpu_tracker_class()

    def make(original: Callable) -> Callable:
        def initialize_rng_tracker(use_te_rng_tracker: bool = False, inference_rng_tracker: bool = False,
                                   use_cudagraphable_rng: bool = False, force_reset: bool = False) -> None:
            original(use_te_rng_tracker, inference_rng_tracker, use_cudagraphable_rng, force_reset)
            if type(mp_random._CUDA_RNG_STATE_TRACKER) is mp_random.CudaRNGStatesTracker:  # not inference/TE
                mp_random._CUDA_RNG_STATE_TRACKER = tracker_class()
        return initialize_rng_tracker

    return _wrap(mp_random, "initialize_rng_tracker", make)


def cpu_rng_state_at_save() -> bool:
    """Fix 3 (see module docstring). Returns whether it is active."""
    if not _cuda_missing():
        return False
    import torch
    from megatron.bridge.training import checkpointing

    def no_cuda_state(device: Any = "cuda") -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8)

    def make(original: Callable) -> Callable:
        def get_rng_state(*args: Any, **kwargs: Any) -> Any:
            saved = torch.cuda.get_rng_state
            torch.cuda.get_rng_state = no_cuda_state
            try:
                return original(*args, **kwargs)
            finally:
                torch.cuda.get_rng_state = saved
        return get_rng_state

    return _wrap(checkpointing, "get_rng_state", make)


def _finalize_on_cpu(storage_writer: Any, global_metadata: Any, dist_wrapper: Any) -> None:
    """megatron-core's ``save_state_dict_async_finalize`` with the failure flag broadcast on CPU."""
    import torch
    import torch.distributed as dist
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


def cpu_save_callbacks(self: Any, writer: Any, save_state_dict_ret: Any, async_strategy: str) -> Any:
    """``TorchDistSaveShardedStrategy._get_save_and_finalize_callbacks`` without CUDA: blocking staging
    copy (no ``torch.cuda.synchronize``), failure flag on CPU."""
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest

    save_fn, _, save_args = writer.get_save_function_and_args()
    preload_fn = functools.partial(writer.preload_tensors, writer.write_buckets, False) if save_fn else None
    return AsyncRequest(save_fn, save_args, [lambda: _finalize_on_cpu(*save_state_dict_ret)],
                        preload_fn=preload_fn)


def cpu_torch_dist_save() -> bool:
    """Fix 4 (see module docstring). Returns whether it is active."""
    if not _cuda_missing():
        return False
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    return _wrap(TorchDistSaveShardedStrategy, "_get_save_and_finalize_callbacks",
                 lambda original: lambda self, *args: cpu_save_callbacks(self, *args))


def cpu_seed_in_load_context() -> bool:
    """Fix 5 (see module docstring). Returns whether it is active."""
    if not _cuda_missing():
        return False
    from megatron.bridge.training import model_load_save

    def make(original: Callable) -> Callable:
        @contextlib.contextmanager
        def temporary_distributed_context(*args: Any, **kwargs: Any) -> Iterator[None]:
            with original(*args, **kwargs):
                from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

                model_parallel_cuda_manual_seed(0)  # what the host does there when CUDA is present
                yield
        return temporary_distributed_context

    return _wrap(model_load_save, "temporary_distributed_context", make)


# host module -> the fix for it, run when the host imports that module (hooks.after_import).
HOOKED = {"megatron.bridge.models.model_provider": cpu_process_group,
          "megatron.core.tensor_parallel.random": cpu_rng_tracker,
          "megatron.core.dist_checkpointing.strategies.torch": cpu_torch_dist_save,
          "megatron.bridge.training.checkpointing": cpu_rng_state_at_save,
          "megatron.bridge.training.model_load_save": cpu_seed_in_load_context}
_HOOKS = {name: (lambda fix: lambda module: fix())(fix) for name, fix in HOOKED.items()}


def install() -> None:
    """Each fix above runs when the host imports the module it corrects (a no-op on GPU machines)."""
    for name, hook in _HOOKS.items():
        hooks.after_import(name, hook)
