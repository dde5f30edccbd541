"""Process groups and devices for conversion and tests: torchrun's group or a one-rank one, megatron-core's
parallel state at TP/EP/PP, and megatron-core's CUDA-device calls on CPU."""

from __future__ import annotations

import atexit
import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from nemotron3_super.host_compat.cuda_on_cpu import cpu_as_current_device


DEVICES = ("cpu", "cuda")


def _backend(device: str) -> str:
    """gloo for CPU tensors; with CUDA present, NCCL for CUDA tensors too (the host's TP mappings move
    replicated tensors to the current GPU at TP > 1, even when the model itself is on CPU)."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r}: expected one of {DEVICES}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' (--device cuda) needs a CUDA GPU; none is visible to torch here")
    if not torch.cuda.is_available():
        return "gloo"
    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > torch.cuda.device_count():
        if device == "cuda":
            raise RuntimeError(f"device='cuda': {world} ranks but {torch.cuda.device_count()} GPU(s) visible "
                               "(one GPU per rank; or use --device cpu)")
        return "gloo"
    torch.cuda.set_device(local)
    return "cpu:gloo,cuda:nccl"


_KEPT_BACKEND: str | None = None  # the backend of the torchrun group made here and kept for the process


def init_process_group(backend: str) -> None:
    """torchrun's group, from its environment; a plain process gets a one-rank group on an in-process store.
    No TCP port is picked, so processes started side by side (parallel test workers, two conversions)
    cannot race for one, and nothing is written into ``os.environ`` for child processes to inherit."""
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def _keep_launched_group(backend: str) -> None:
    """A torchrun group is made once per process and kept for the process's later conversions: gloo cannot
    meet again on torchrun's store (the second rendezvous reads the first one's addresses and rank 1 fails to
    connect), so an import followed by an export in one script would fail. Destroyed at exit."""
    global _KEPT_BACKEND
    if _KEPT_BACKEND is None:
        atexit.register(_destroy_kept_group)
    _KEPT_BACKEND = backend


def _destroy_kept_group() -> None:
    global _KEPT_BACKEND
    if _KEPT_BACKEND is not None and dist.is_initialized():
        dist.destroy_process_group()
    _KEPT_BACKEND = None


@contextlib.contextmanager
def parallel_group(tp: int = 1, ep: int = 1, device: str = "cpu", pp: int = 1) -> Iterator[None]:
    """Process group (torchrun's ranks, else one local rank) + megatron-core parallel state with
    TP ``tp`` / EP ``ep`` / PP ``pp``, unless the caller (tests, a training job) already made them.
    ``device`` is where the model will live ("cpu", or "cuda": one GPU per rank, NCCL)."""
    made_group = not dist.is_initialized()
    if made_group:
        backend = _backend(device)
        init_process_group(backend)
        if "RANK" in os.environ:
            _keep_launched_group(backend)
            made_group = False
    elif device == "cuda" and not torch.cuda.is_available():
        _backend(device)  # raises the clear message
    elif _KEPT_BACKEND is not None and (wanted := _backend(device)) != _KEPT_BACKEND:
        raise RuntimeError(f"device={device!r} needs process-group backend {wanted!r}, but an earlier conversion "
                           f"in this torchrun process made it with {_KEPT_BACKEND!r}; run each device in its own "
                           "launch")
    made_parallel = not parallel_state.model_parallel_is_initialized()
    if made_parallel:
        if dist.get_world_size() % (tp * ep * pp):
            raise ValueError(f"world size {dist.get_world_size()} is not a multiple of tp={tp} x ep={ep} x pp={pp}"
                             " (start one torchrun process per shard)")
        parallel_state.initialize_model_parallel(tp, pp, expert_model_parallel_size=ep)
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


@contextlib.contextmanager
def cpu_current_device() -> Iterator[None]:
    """Only without CUDA, scoped to model construction and the conversion loop: megatron-core 0.19
    allocates a few tensors with ``device=torch.cuda.current_device()`` even under
    ``use_cpu_initialization``, and the host's ReplicatedMapping moves tensors there at TP > 1; here that
    call returns the default device (cpu) instead of failing for want of a driver. Restored on exit."""
    if torch.cuda.is_available():
        yield
        return
    with cpu_as_current_device():
        yield
