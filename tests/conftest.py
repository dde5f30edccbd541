"""Shared test fixtures: torch.distributed + megatron-core parallel state for model builds."""

from __future__ import annotations

import os

import pytest

import nemotron3_super  # noqa: F401 - applies the host fixes before any test imports megatron
from nemotron3_super.activation import uninstall

# Test processes install into the host explicitly where a test wants it (the start-up hook that
# nemotron3_super.pth adds is tested in fresh interpreters: tests/unit/test_activation.py).
uninstall()


@pytest.fixture(scope="session")
def process_group():
    """torch.distributed for this process: torchrun's group, or a 1-rank gloo (CPU) / nccl (GPU) one."""
    import torch
    import torch.distributed as dist

    from nemotron3_super.conversion.process_groups import init_process_group

    created = not dist.is_initialized()
    if created:  # plain pytest: one rank on an in-process store (no port to race other workers for)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # GPU: NCCL for CUDA tensors and gloo for CPU ones (conversion saves CPU shards in the same session)
        init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    yield dist
    if created:
        dist.destroy_process_group()


@pytest.fixture
def model_parallel(process_group):
    """Call ``init(tp=1, ep=1, pp=1, seed=1234)`` to set up megatron-core's parallel state (and its
    RNG); it is torn down after the test."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mp_random

    def init(tp: int = 1, ep: int = 1, pp: int = 1, seed: int = 1234) -> None:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                                 expert_model_parallel_size=ep)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            mp_random.model_parallel_cuda_manual_seed(seed)
        else:  # no CUDA RNG to fork: megatron's inference tracker makes fork() a no-op (CPU draws)
            mp_random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)

    yield init
    parallel_state.destroy_model_parallel()
    mp_random.initialize_rng_tracker(force_reset=True)
