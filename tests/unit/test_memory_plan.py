"""The per-GPU memory estimate against peaks measured on a GPU (each measurement: card, date and command in
recipes/memory.py and BENCHMARKS.md). Stdlib-only estimate: runs anywhere."""

from __future__ import annotations

import dataclasses

import pytest

from nemotron3_super.architecture import super_120b_a12b
from nemotron3_super.recipes.layout import Layout
from nemotron3_super.recipes.memory import (
    GIB,
    MEASURED_PEAKS_GIB,
    TORCH_ADAMW_BF16,
    MemorySettings,
    estimate_memory,
)


@pytest.mark.parametrize(("pattern", "seq", "mbs"), sorted(MEASURED_PEAKS_GIB))
def test_estimate_is_within_15_percent_of_the_measured_peak(pattern: str, seq: int, mbs: int) -> None:
    arch = dataclasses.replace(super_120b_a12b(), hybrid_override_pattern=pattern, num_nextn_predict_layers=0,
                               mtp_hybrid_override_pattern="")
    layout = Layout(gpus=1, seq_length=seq, mbs=mbs, gbs=mbs)
    estimate = estimate_memory(arch, layout, MemorySettings(**TORCH_ADAMW_BF16)).peak / GIB
    measured = MEASURED_PEAKS_GIB[(pattern, seq, mbs)]
    assert abs(estimate - measured) <= 0.15 * measured, f"estimate {estimate:.2f} GiB vs measured {measured:.2f} GiB"


def test_no_fp32_grad_copy_without_master_weights_and_grads_fill_as_activations_free() -> None:
    arch = dataclasses.replace(super_120b_a12b(), hybrid_override_pattern="MEM*E", num_nextn_predict_layers=0,
                               mtp_hybrid_override_pattern="")
    layout = Layout(gpus=1, seq_length=4096, mbs=1, gbs=1)
    torch_adamw = estimate_memory(arch, layout, MemorySettings(**TORCH_ADAMW_BF16)).stages[0]
    assert torch_adamw.transient == 0  # bf16 AdamW: no fp32 master, so no fp32 grad copy
    assert torch_adamw.total == torch_adamw.weights + torch_adamw.optimizer + max(torch_adamw.activations,
                                                                                   torch_adamw.grads)
    megatron = estimate_memory(arch, layout, MemorySettings(grad_bytes=2, distributed_optimizer=False)).stages[0]
    assert megatron.transient > 0  # bf16 grads upcast for the fp32 master weights
    assert megatron.total == (megatron.weights + megatron.grads + megatron.optimizer
                              + max(megatron.activations, megatron.transient) + megatron.overhead)
