"""The host's CUDA assumptions on a machine without a GPU (nemotron3_super.host_compat.cuda_on_cpu), one test per fix,
through the host's own functions."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the fixes apply only without CUDA")


@pytest.fixture
def host_parallel_state():
    """The host's provider sets up its own process group and parallel state; torn down afterwards."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mp_random

    from nemotron3_super.host_compat.cuda_on_cpu import cpu_process_group, cpu_rng_tracker
    from nemotron3_super.provider import tiny_super_provider

    assert cpu_process_group() and cpu_rng_tracker()
    assert cpu_process_group()  # idempotent
    created = not dist.is_initialized()
    try:
        tiny_super_provider().initialize_model_parallel(seed=7)  # set_device + NCCL + CUDA seeding upstream
        yield
    finally:
        parallel_state.destroy_model_parallel()
        mp_random.initialize_rng_tracker(force_reset=True)
        if created and dist.is_initialized():
            dist.destroy_process_group()


def test_cpu_process_group(host_parallel_state) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    assert dist.get_backend() == "gloo" and parallel_state.model_parallel_is_initialized()


def test_cpu_rng_tracker(host_parallel_state) -> None:
    from megatron.core.tensor_parallel import random as mp_random

    tracker = mp_random.get_cuda_rng_tracker()
    outer = torch.get_rng_state()
    with tracker.fork():  # the tensor-parallel state: seed 7 + 2718 (megatron-core's offset)
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outer), "fork() restores the CPU RNG"
    assert torch.equal(first, torch.rand(4, generator=torch.Generator().manual_seed(7 + 2718)))
    with tracker.fork():
        assert not torch.equal(torch.rand(4), first), "the forked state advances"


def test_cpu_rng_state_at_save(host_parallel_state) -> None:
    from megatron.bridge.training import checkpointing
    from megatron.core.process_groups_config import ProcessGroupCollection

    from nemotron3_super.host_compat.cuda_on_cpu import cpu_rng_state_at_save

    assert cpu_rng_state_at_save()
    getter = torch.cuda.get_rng_state
    sharded = checkpointing.get_rng_state(data_parallel_random_init=False, ckpt_format="torch_dist",
                                          pg_collection=ProcessGroupCollection.use_mpu_process_groups())
    state = sharded.data[0] if isinstance(sharded.data, list) else sharded.data
    assert state["cuda_rng_state"].numel() == 0 and torch.equal(state["torch_rng_state"], torch.get_rng_state())
    assert torch.cuda.get_rng_state is getter, "torch.cuda is left as it was"


def test_cpu_torch_dist_save(host_parallel_state, tmp_path) -> None:
    """megatron-core's default torch_dist writer (the host's save path) writes and reads back on CPU."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from nemotron3_super.host_compat.cuda_on_cpu import cpu_torch_dist_save

    assert cpu_torch_dist_save()
    weight = torch.arange(6.0)
    dist_checkpointing.save({"w": ShardedTensor.from_rank_offsets("w", weight, replica_id=0)}, str(tmp_path))
    loaded = dist_checkpointing.load({"w": ShardedTensor.from_rank_offsets("w", torch.empty(6), replica_id=0)},
                                     str(tmp_path))
    assert torch.equal(loaded["w"], weight)


def test_cpu_seed_in_load_context() -> None:
    """The host's load context (``load_megatron_model``, ``AutoBridge.export_ckpt``) seeds the tracker on CPU
    too, so a Mamba layer (which forks it in ``__init__``) builds there."""
    import torch.distributed as dist
    from megatron.bridge.training import model_load_save
    from megatron.core.tensor_parallel import random as mp_random

    from nemotron3_super.host_compat.cuda_on_cpu import cpu_rng_tracker, cpu_seed_in_load_context

    assert cpu_rng_tracker() and cpu_seed_in_load_context() and cpu_seed_in_load_context()  # idempotent
    if dist.is_initialized():
        pytest.skip("the host's context starts its own process group")
    try:
        with model_load_save.temporary_distributed_context("gloo"):
            with mp_random.get_cuda_rng_tracker().fork():  # megatron-core's default name, as MambaMixer forks
                forked = torch.rand(4)
        assert torch.equal(forked, torch.rand(4, generator=torch.Generator().manual_seed(0 + 2718)))
        assert not dist.is_initialized(), "the host's context still tears its group down"
    finally:
        mp_random.initialize_rng_tracker(force_reset=True)
